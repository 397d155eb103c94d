//! Manifests by tag or digest, and the referrers API.

use super::errors::{ApiError, Code};
use super::routes::Query;
use super::{header, read_small_body, App, Reply, Result};
use crate::digest::Digest;
use crate::registry::manifest::{descriptor_artifact_type, Manifest, OCI_INDEX};
use crate::registry::names::valid_tag;
use crate::registry::Reference;
use crate::storage::NewManifest;
use tiny_http::Request;

/// `GET`/`HEAD` a manifest by tag or digest. A reference that is neither names no manifest:
/// 404, as the distribution spec requires (a PUT to it is refused with 400).
pub fn get(app: &App, name: &str, reference: &str) -> Result<Reply> {
    let parsed = Reference::parse(reference).map_err(|_| {
        ApiError::new(
            404,
            Code::ManifestUnknown,
            format!("manifest unknown: {reference:?} is neither a valid tag nor a digest"),
        )
    })?;
    let m = match parsed {
        Reference::Tag(t) => app.store.manifest_by_tag(name, &t)?,
        Reference::Digest(d) => app.store.manifest_by_digest(name, &d)?,
    };
    Ok(Reply::bytes(200, &m.media_type, m.body).header("Docker-Content-Digest", m.digest))
}

/// Counts a served manifest `GET` (not `HEAD`) of `reference` in `name` as a pull: in memory,
/// written to the store a batch at a time.
pub fn count_pull(
    app: &App,
    method: &tiny_http::Method,
    (name, reference): (&str, &str),
    reply: Result<Reply>,
) -> Result<Reply> {
    if *method == tiny_http::Method::Get && reply.is_ok() {
        app.store.pulled(name, reference);
    }
    reply
}

/// `GET`/`HEAD` a manifest of a pull-through cache's repository: refreshed from the
/// upstream first (see `PullThrough::manifest`); its repository is spared by evictions until
/// the manifest is read, and one the store refused is served from the fetched bytes.
pub fn get_cached(
    app: &App,
    route: &crate::mirror::cache::Route<'_>,
    name: &str,
    reference: &str,
) -> Result<Reply> {
    let mut pulled = app
        .cache
        .manifest(&app.store, route, name, reference)
        .map_err(|e| super::upstream_failed(&format!("manifest {reference}"), &e))?;
    if let Some(f) = pulled.unkept.take() {
        return Ok(Reply::bytes(200, &f.media_type, f.body)
            .header("Docker-Content-Digest", f.digest.as_str()));
    }
    get(app, name, reference)
}

/// `PUT` a manifest: bounded read, digest check, validation, then one transaction that checks
/// its references and stores it with its tags and referrer entry.
pub fn put(
    app: &App,
    req: &mut Request,
    name: &str,
    reference: &str,
    query: &Query,
) -> Result<Reply> {
    let reference = Reference::parse(reference)?;
    let mut room = app.buffers.body_room();
    let body = read_small_body(
        req,
        app.config.max_manifest_size,
        ("manifest", Code::ManifestInvalid),
        Some(&mut room),
    )?;
    let digest = match &reference {
        Reference::Digest(d) => {
            let actual = d.rehash(&body);
            if actual != *d {
                return Err(ApiError::new(
                    400,
                    Code::DigestInvalid,
                    format!("manifest has digest {actual}, not {d}"),
                ));
            }
            actual
        }
        Reference::Tag(_) => Digest::sha256_of(&body),
    };
    let content_type =
        header(req, "Content-Type").map(|v| v.split(';').next().unwrap_or("").trim());
    let manifest = Manifest::parse(content_type, &body)?;
    let mut tags: Vec<String> = Vec::new();
    if let Reference::Tag(t) = &reference {
        tags.push(t.clone());
    }
    for t in query.all("tag") {
        if !valid_tag(t) {
            return Err(ApiError::new(
                400,
                Code::ManifestInvalid,
                format!("invalid tag {t:?} in tag parameter"),
            ));
        }
        tags.push(t.to_owned());
    }
    let rules = &app.config.immutable_tags;
    let immutable = |tag: &str| crate::registry::immutable::rule_for(rules, name, tag);
    let mut new = NewManifest::of(&manifest, &digest, &body, &tags, false);
    new.immutable = Some(&immutable);
    app.store.manifest_put(name, &new)?;
    let mut reply = Reply::empty(201)
        .header("Location", format!("/v2/{name}/manifests/{digest}"))
        .header("Docker-Content-Digest", digest.as_str());
    if let Some(s) = &manifest.subject {
        reply = reply.header("OCI-Subject", s.as_str());
    }
    Ok(reply)
}

/// `DELETE` by digest removes the manifest and its tags; by tag removes only the tag. An
/// immutable tag may be deleted (the route needs the delete right); it is logged.
pub fn delete(app: &App, name: &str, reference: &str) -> Result<Reply> {
    let rules = &app.config.immutable_tags;
    match Reference::parse(reference)? {
        Reference::Digest(d) => {
            for t in app.store.manifest_delete(name, &d)? {
                if let Some(rule) = crate::registry::immutable::rule_for(rules, name, &t) {
                    log::warn!("deleted immutable tag {name}:{t} ({rule}) with manifest {d}");
                }
            }
        }
        Reference::Tag(t) => {
            app.store.tag_delete(name, &t)?;
            if let Some(rule) = crate::registry::immutable::rule_for(rules, name, &t) {
                log::warn!("deleted immutable tag {name}:{t} ({rule})");
            }
        }
    }
    Ok(Reply::empty(202))
}

/// `GET /v2/<name>/referrers/<digest>[?artifactType=]`: an OCI index of the manifests whose
/// subject is `digest` (empty when none).
pub fn referrers(app: &App, name: &str, digest: &str, query: &Query) -> Result<Reply> {
    let subject = Digest::parse(digest)?;
    let filter = query.get("artifactType");
    let mut list = app.store.referrers(name, &subject)?;
    if let Some(t) = filter {
        list.retain(|d| descriptor_artifact_type(d).as_deref() == Some(t));
    }
    let mut body =
        format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":["#).into_bytes();
    for (i, d) in list.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(d);
    }
    body.extend_from_slice(b"]}");
    let reply = Reply::bytes(200, OCI_INDEX, body);
    Ok(match filter {
        Some(_) => reply.header("OCI-Filters-Applied", "artifactType"),
        None => reply,
    })
}
