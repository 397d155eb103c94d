//! `outpost export`, `outpost import` and `outpost mirror`: against the running registry
//! over HTTP (with credentials when auth is on), or on the store when it is stopped.

use super::{call_for, reach, Reach};
use crate::config::Config;
use crate::mirror::archive::Archive;
use crate::mirror::layout::LayoutWriter;
use crate::mirror::local::{LocalSink, LocalSource};
use crate::mirror::progress::{human, Progress};
use crate::mirror::remote::Remote;
use crate::mirror::{copy_image, ImageName, Platform, Sink, Source};
use crate::storage::Store;
use std::path::Path;
use std::time::{Duration, Instant};

/// Who the CLI is towards a running registry: `--user` (password from `$OUTPOST_PASSWORD`,
/// the terminal, or the first line of stdin).
pub struct Login {
    /// `--server`: the registry's URL.
    pub server: Option<String>,
    /// `--user`.
    pub user: Option<String>,
    /// `--ca-file`: CA certificates for an https `--server`.
    pub ca_file: Option<std::path::PathBuf>,
}

/// The store, or an HTTP client of the running registry.
enum Target {
    Store(Box<Store>),
    Http(Box<Remote>),
}

fn target(config: &Config, login: &Login, create: bool) -> Result<Target, String> {
    let url = match &login.server {
        Some(s) if s.starts_with("http://") || s.starts_with("https://") => Some(s.clone()),
        Some(s) => Some(format!("http://{s}")),
        None => None,
    };
    // With --server the registry is remote: never fall back to a local store.
    let reached = match &url {
        Some(_) => None,
        None => Some(super::reach_or_create(config, None, create)?),
    };
    let url = match reached {
        Some(Reach::Offline(store, _)) => return Ok(Target::Store(store)),
        Some(Reach::Online(at)) => {
            // Copying needs HTTP: the registry serving the store, where it says it listens.
            let (addr, tls) = super::http_addr(&at, config)?;
            let scheme = if tls { "https" } else { "http" };
            format!("{scheme}://{addr}")
        }
        None => url.expect("set when not reached"),
    };
    let creds = match &login.user {
        None => None,
        Some(u) => Some((u.clone(), password(u)?)),
    };
    // The local registry's own certificate is what a self-signed setup trusts.
    let ca = match (&login.ca_file, &login.server) {
        (Some(f), _) => Some(f.as_path()),
        (None, None) => config.tls.as_ref().map(|t| t.cert_file.as_path()),
        (None, Some(_)) => None,
    };
    Ok(Target::Http(Box::new(Remote::new(&url, creds, ca)?)))
}

fn password(user: &str) -> Result<String, String> {
    if let Ok(p) = std::env::var("OUTPOST_PASSWORD") {
        return Ok(p);
    }
    // SAFETY: isatty only inspects file descriptor 0.
    if unsafe { libc::isatty(0) } == 1 {
        return super::users::prompt_hidden(&format!("password for {user}: "));
    }
    super::users::stdin_line()
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
                println!("exported {d}");
            }
            report("exported", total, started);
            println!("wrote {}", out.display());
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
    println!(
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
    let (mut moved, mut present) = (0u64, 0u64);
    let mut lines = Vec::new();
    for (repo, tag, digest) in &plan {
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
                moved += c.bytes_copied;
                present += c.bytes_total - c.bytes_copied;
                lines.push(format!(
                    "imported {name} ({}): {} blob(s) stored, {} already present",
                    c.top.map(|t| t.digest.to_string()).unwrap_or_default(),
                    c.blobs_copied,
                    c.blobs_present
                ));
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
        println!("{l}");
    }
    report("imported", moved, started);
    if present > 0 {
        println!(
            "{} were already stored and not written again",
            human(present)
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

/// `outpost mirror run [NAME]`: one pass of each named (or every) mirror with repositories.
pub fn run(config: &Config, server: Option<&str>, name: Option<&str>) -> Result<(), String> {
    let chosen: Vec<_> = config
        .mirrors
        .iter()
        .filter(|m| name.is_none_or(|n| n == m.name) && !m.repositories.is_empty())
        .collect();
    if chosen.is_empty() {
        return Err(match name {
            Some(n) => format!("no mirror named {n} with repositories to sync in the config"),
            None => "the config has no mirrors with repositories to sync".into(),
        });
    }
    // A gateway's first pass may be what creates its store.
    let reached = super::reach_or_create(config, server, true)?;
    let mut bad = 0;
    for m in chosen {
        let report = match &reached {
            Reach::Online(at) => call_for(
                at,
                "POST",
                &format!("/admin/mirrors/{}/run", m.name),
                None,
                200,
                Duration::from_secs(24 * 3600),
            )?,
            Reach::Offline(store, _) => {
                let stopping = std::sync::atomic::AtomicBool::new(false);
                let r =
                    crate::mirror::sync::run_pass(store, m, &stopping, Progress::for_terminal())
                        .map_err(|e| e.message)?;
                store.flush().map_err(|e| e.to_string())?;
                r
            }
        };
        if report["result"] != "ok" {
            bad += 1;
        }
        print_run(&m.name, &report);
    }
    if bad > 0 {
        return Err(format!("{bad} mirror pass(es) had failures"));
    }
    Ok(())
}

fn print_run(name: &str, r: &serde_json::Value) {
    println!(
        "mirror {name}: {} ({} image(s) checked, {} fetched, {} blob(s), {} in {:.1}s)",
        r["result"].as_str().unwrap_or("?"),
        r["images"],
        r["imagesFetched"],
        r["blobsFetched"],
        human(r["bytesFetched"].as_u64().unwrap_or(0)),
        r["durationMs"].as_u64().unwrap_or(0) as f64 / 1000.0
    );
    for f in r["failures"].as_array().into_iter().flatten() {
        println!(
            "  failed {}: {}",
            f["image"].as_str().unwrap_or(""),
            f["reason"].as_str().unwrap_or("")
        );
    }
}

/// `outpost mirror status`.
pub fn status(config: &Config, server: Option<&str>) -> Result<(), String> {
    let v = match reach(config, server)? {
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
        println!("no mirrors are configured");
    }
    for m in list {
        let name = m["name"].as_str().unwrap_or("?");
        println!(
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
            println!("mirror {name}: never run");
        }
        if m["cache"].is_object() {
            let c = &m["cache"];
            println!(
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
                println!(
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
