//! `outpost export`, `outpost import` and `outpost mirror`: against the running registry
//! over HTTP(S) (with credentials when auth is on), or on the store when it is stopped.

use super::output::note;
use super::output::out;
use super::{call_for, reach, Endpoint, Login, Reach};
use crate::config::Config;
use crate::mirror::archive::Archive;
use crate::mirror::layout::LayoutWriter;
use crate::mirror::local::{LocalSink, LocalSource};
use crate::mirror::progress::{human, Progress};
use crate::mirror::remote::Remote;
use crate::mirror::{copy_image, is_index, ImageName, Platform, Sink, Source};
use crate::storage::Store;
use std::path::Path;
use std::time::{Duration, Instant};

/// The store, or an HTTP client of the running registry.
enum Target {
    Store(Box<Store>),
    Http(Box<Remote>),
}

/// Where images are copied from or to: the registry `--server` names, else the one serving
/// the store (over HTTP where it says it listens: copying needs the registry API, not the
/// admin socket), else the store.
fn target(config: &Config, login: &Login, create: bool) -> Result<Target, String> {
    match super::reach_or_create(config, login, create)? {
        Reach::Offline(store, _) => Ok(Target::Store(store)),
        Reach::Online(Endpoint::Remote(r)) => Ok(Target::Http(r)),
        Reach::Online(at @ Endpoint::Socket(_)) => {
            let (addr, tls) = super::http_addr(&at)?;
            let scheme = if tls { "https" } else { "http" };
            // The local registry's own certificate is what a self-signed setup trusts.
            let ca = match &login.ca_file {
                Some(f) => Some(f.as_path()),
                None => config.tls.as_ref().map(|t| t.cert_file.as_path()),
            };
            Ok(Target::Http(Box::new(
                login.remote(&format!("{scheme}://{addr}"), ca)?,
            )))
        }
    }
}

/// `outpost export IMAGE... -o OUT [--platform P,...]`.
pub fn export(
    config: &Config,
    login: &Login,
    images: &[String],
    out: &Path,
    platforms: Option<Vec<Platform>>,
) -> Result<(), String> {
    let names = images
        .iter()
        .map(|i| ImageName::parse(i))
        .collect::<Result<Vec<_>, _>>()?;
    let target = target(config, login, false)?;
    let local;
    let src: &dyn Source = match &target {
        Target::Store(s) => {
            local = LocalSource(s);
            &local
        }
        Target::Http(r) => r.as_ref(),
    };
    let list_tags = |repo: &str| match &target {
        Target::Store(s) => LocalSource(s)
            .tags(repo)
            .map_err(|e| format!("tags of {repo}: {}", e.message)),
        Target::Http(r) => r.tags(repo).map_err(|e| e.message),
    };
    let mut writer = LayoutWriter::create(out).map_err(|e| e.message)?;
    let mut progress = Progress::for_terminal();
    let started = Instant::now();
    let mut total = 0u64;
    let result = (|| -> Result<Vec<String>, String> {
        let mut done = Vec::new();
        for n in &names {
            let refs = match &n.reference {
                Some(r) => vec![r.clone()],
                None => list_tags(&n.repo).map_err(|e| e.to_string())?,
            };
            if refs.is_empty() {
                return Err(format!("{} has no tags: name an image by digest", n.repo));
            }
            for r in refs {
                let c = copy_image(
                    src,
                    &n.repo,
                    &r,
                    &mut writer,
                    &n.repo,
                    None,
                    platforms.as_deref(),
                    &mut progress,
                )
                .map_err(|e| e.message)?;
                let top = c.top.expect("a copy stores its top manifest");
                let tag = (!r.contains(':')).then_some(r.as_str());
                writer.name(&top, &n.repo, tag);
                total += c.bytes_total;
                done.push(format!(
                    "{}{}{r} ({})",
                    n.repo,
                    if tag.is_some() { ":" } else { "@" },
                    top.digest
                ));
            }
        }
        Ok(done)
    })();
    progress.finish();
    match result {
        Ok(done) => {
            writer.finish().map_err(|e| e.message)?;
            for d in &done {
                out!("exported {d}");
            }
            report("exported", total, started);
            out!("wrote {}", out.display());
            Ok(())
        }
        Err(e) => {
            writer.abandon();
            Err(e)
        }
    }
}

fn report(verb: &str, bytes: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64().max(0.001);
    out!(
        "{verb} {} in {:.1}s ({}/s)",
        human(bytes),
        secs,
        human((bytes as f64 / secs) as u64)
    );
}

/// `outpost import ARCHIVE [--repo NAME[:TAG]] [--platform P,...]`.
pub fn import(
    config: &Config,
    login: &Login,
    input: &Path,
    repo: Option<&str>,
    platforms: Option<Vec<Platform>>,
) -> Result<(), String> {
    let archive = Archive::open(input).map_err(|e| e.message)?;
    let rename = repo.map(ImageName::parse).transpose()?;
    if archive.entries.is_empty() {
        return Err(format!(
            "{}: the {} names no image",
            input.display(),
            archive.format
        ));
    }
    let mut plan = Vec::new();
    for (i, e) in archive.entries.iter().enumerate() {
        let (r, t) = match &rename {
            Some(n) => (Some(n.repo.clone()), n.reference.clone().or(e.tag.clone())),
            None => (e.repo.clone(), e.tag.clone()),
        };
        let r = r.ok_or_else(|| {
            format!(
                "image {} of {} ({}) has no repository name in the archive: give --repo NAME[:TAG]",
                i + 1,
                input.display(),
                e.digest
            )
        })?;
        plan.push((r, t, e.digest.clone()));
    }
    let mut target = target(config, login, true)?;
    // What each tag names now, to say so when the import moves it.
    let before: Vec<Option<(String, String)>> = plan
        .iter()
        .map(|(repo, tag, _)| {
            let tag = tag.as_deref()?;
            let m = match &target {
                Target::Store(s) => LocalSource(s).manifest(repo, tag, None),
                Target::Http(r) => r.manifest(repo, tag, None),
            };
            m.ok().map(|m| (m.digest.to_string(), shape(&m)))
        })
        .collect();
    let mut local;
    let sink: &mut dyn Sink = match &mut target {
        Target::Store(s) => {
            local = LocalSink::new(s);
            &mut local
        }
        Target::Http(r) => r.as_mut(),
    };
    let mut progress = Progress::for_terminal();
    let started = Instant::now();
    let mut failed = Vec::new();
    let (mut stored, mut present) = ((0u64, 0u64), (0u64, 0u64));
    let mut lines = Vec::new();
    for ((repo, tag, digest), before) in plan.iter().zip(&before) {
        let name = match tag {
            Some(t) => format!("{repo}:{t}"),
            None => format!("{repo}@{digest}"),
        };
        match copy_image(
            &archive,
            "",
            digest.as_str(),
            sink,
            repo,
            tag.as_deref(),
            platforms.as_deref(),
            &mut progress,
        ) {
            Ok(c) => {
                stored.0 += c.blobs_copied;
                stored.1 += c.bytes_copied;
                present.0 += c.blobs_present;
                present.1 += c.bytes_total - c.bytes_copied;
                let top = c.top.expect("a copy stores its top manifest");
                lines.push(format!(
                    "imported {name} ({}): {} blob(s) stored, {} already present",
                    top.digest, c.blobs_copied, c.blobs_present
                ));
                if let Some((old, was)) = before {
                    if *old != top.digest.to_string() {
                        lines.push(format!(
                            "  tag {name} moved from {old} ({was}) to {} ({})",
                            top.digest,
                            shape(&top)
                        ));
                    }
                }
            }
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    progress.finish();
    if let Target::Store(s) = &target {
        // Links made by mounts are committed without fsync; make them durable now.
        s.flush().map_err(|e| e.to_string())?;
    }
    for l in &lines {
        out!("{l}");
    }
    // A summary only of what was imported: a refused import reports its refusal alone.
    if !lines.is_empty() {
        let secs = started.elapsed().as_secs_f64().max(0.001);
        out!(
            "{} blob(s) stored ({}) in {secs:.1}s ({}/s); {} blob(s) already present ({}, not \
             written again)",
            stored.0,
            human(stored.1),
            human((stored.1 as f64 / secs) as u64),
            present.0,
            human(present.1)
        );
    }
    if failed.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} of {} image(s) not imported (nothing of them is visible):\n  {}",
        failed.len(),
        plan.len(),
        failed.join("\n  ")
    ))
}

/// What kind of image `m` is, for a tag's move: how many platforms an index lists.
fn shape(m: &crate::mirror::Fetched) -> String {
    if !is_index(m) {
        return "a single-platform image".into();
    }
    let n = serde_json::from_slice::<serde_json::Value>(&m.body)
        .ok()
        .and_then(|v| v["manifests"].as_array().map(Vec::len))
        .unwrap_or(0);
    format!("an index of {n} platform(s)")
}

/// `outpost mirror run [NAME]`: one pass of each named (or every) mirror with repositories:
/// those the running registry has, else the config's.
pub fn run(config: &Config, login: &Login, name: Option<&str>) -> Result<(), String> {
    let syncing = |n: &str| name.is_none_or(|want| want == n);
    let none = || match name {
        Some(n) => format!("no mirror named {n} with repositories to sync"),
        None => "no mirrors with repositories to sync are configured".into(),
    };
    let local: Vec<_> = config
        .mirrors
        .iter()
        .filter(|m| syncing(&m.name) && !m.repositories.is_empty())
        .collect();
    // Nothing to run here: say so before creating a store for it.
    if login.server.is_none() && local.is_empty() {
        return Err(format!("{} in the config", none()));
    }
    // A gateway's first pass may be what creates its store.
    let reached = super::reach_or_create(config, login, true)?;
    let names: Vec<String> = match &reached {
        Reach::Online(at) => super::call(at, "GET", "/admin/mirrors", None, 200)?["mirrors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| !m["repositories"].as_array().is_none_or(Vec::is_empty))
            .filter_map(|m| m["name"].as_str().map(str::to_owned))
            .filter(|n| syncing(n))
            .collect(),
        Reach::Offline(..) => local.iter().map(|m| m.name.clone()).collect(),
    };
    if names.is_empty() {
        return Err(format!(
            "{} at {}",
            none(),
            login.server.as_deref().unwrap_or("the registry")
        ));
    }
    let mut failed = Vec::new();
    for n in &names {
        let report = match &reached {
            Reach::Online(at) => call_for(
                at,
                "POST",
                &format!("/admin/mirrors/{n}/run"),
                None,
                200,
                Duration::from_secs(24 * 3600),
            ),
            Reach::Offline(store, _) => {
                let m = local
                    .iter()
                    .find(|m| &m.name == n)
                    .expect("chosen from these");
                let stopping = std::sync::atomic::AtomicBool::new(false);
                crate::mirror::sync::run_pass(store, m, &stopping, Progress::for_terminal())
                    .map_err(|e| e.message)
                    .and_then(|r| store.flush().map(|()| r).map_err(|e| e.to_string()))
            }
        };
        match report {
            Ok(r) => {
                if r["result"] != "ok" {
                    failed.push(n.clone());
                }
                print_run(n, &r);
            }
            Err(e) => {
                note!("outpost: mirror {n}: {e}");
                failed.push(n.clone());
            }
        }
    }
    if !failed.is_empty() {
        return Err(format!(
            "the pass of mirror(s) {} failed ({} of {})",
            failed.join(", "),
            failed.len(),
            names.len()
        ));
    }
    Ok(())
}

fn print_run(name: &str, r: &serde_json::Value) {
    out!(
        "mirror {name}: {} ({} image(s) checked, {} fetched, {} blob(s), {} in {:.1}s)",
        r["result"].as_str().unwrap_or("?"),
        r["images"],
        r["imagesFetched"],
        r["blobsFetched"],
        human(r["bytesFetched"].as_u64().unwrap_or(0)),
        r["durationMs"].as_u64().unwrap_or(0) as f64 / 1000.0
    );
    for f in r["failures"].as_array().into_iter().flatten() {
        out!(
            "  failed {}: {}",
            f["image"].as_str().unwrap_or(""),
            f["reason"].as_str().unwrap_or("")
        );
    }
}

/// `outpost mirror status`.
pub fn status(config: &Config, login: &Login) -> Result<(), String> {
    let v = match reach(config, login)? {
        Reach::Online(at) => call_for(
            &at,
            "GET",
            "/admin/mirrors",
            None,
            200,
            Duration::from_secs(30),
        )?,
        Reach::Offline(store, _) => {
            crate::mirror::sync::status(&store, &config.mirrors).map_err(|e| e.message)?
        }
    };
    let list = v["mirrors"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        out!("no mirrors are configured");
    }
    for m in list {
        let name = m["name"].as_str().unwrap_or("?");
        out!(
            "{name}: {}{}{}",
            m["upstream"].as_str().unwrap_or("?"),
            m["pullThrough"]
                .as_str()
                .map(|p| format!(", pull-through cache at {p}/"))
                .unwrap_or_default(),
            if m["running"] == true {
                ", a pass is running"
            } else {
                ""
            }
        );
        if m["lastRun"].is_object() {
            print_run(name, &m["lastRun"]);
        } else if !m["repositories"].as_array().is_none_or(Vec::is_empty) {
            out!("mirror {name}: never run");
        }
        if m["cache"].is_object() {
            let c = &m["cache"];
            out!(
                "  cache: {} fetch(es), {} fetched, {} served while the upstream failed{}",
                c["fetches"],
                human(c["bytesFetched"].as_u64().unwrap_or(0)),
                c["servedWhileUpstreamDown"],
                c["lastFailure"]["reason"]
                    .as_str()
                    .map(|r| format!("; last failure: {r}"))
                    .unwrap_or_default()
            );
            if let (Some(held), Some(max)) = (c["held"].as_u64(), c["maxSize"].as_u64()) {
                out!(
                    "  cache holds {} of its maxSize {}; {} image(s) evicted",
                    human(held),
                    human(max),
                    c["evictedImages"]
                );
            }
        }
    }
    Ok(())
}
