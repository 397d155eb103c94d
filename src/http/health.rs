//! `/healthz` and `/readyz` for load balancers, orchestrators and systemd: no credentials, and
//! a body that names at most a category of trouble (no paths, versions or counts).

use super::{App, Reply};
use std::sync::atomic::Ordering;

/// Which probe a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/healthz`: the process serves and the store answers.
    Live,
    /// `/readyz`: the registry can take work now.
    Ready,
}

impl Probe {
    /// The probe at `path` (no query), if it is one.
    pub fn at(path: &str) -> Option<Probe> {
        match path {
            "/healthz" => Some(Probe::Live),
            "/readyz" => Some(Probe::Ready),
            _ => None,
        }
    }
}

/// The answer to a probe at `path`, or `None` if `path` is not `/healthz` or `/readyz`: for
/// any listener that serves them (the registry port, the metrics listener).
pub fn health_reply(app: &App, path: &str) -> Option<Reply> {
    Probe::at(path).map(|p| reply(app, p))
}

/// 200 `ok`, or 503 with the category of trouble (and `Retry-After` when not ready).
pub(super) fn reply(app: &App, probe: Probe) -> Reply {
    let trouble = match probe {
        Probe::Live => app.store.ping().err().map(|_| "store not answering"),
        Probe::Ready => not_ready(app),
    };
    let reply = |status, text: String| {
        Reply::bytes(status, "text/plain; charset=utf-8", text.into_bytes())
            .header("Cache-Control", "no-store")
    };
    match (trouble, probe) {
        (None, _) => reply(200, "ok\n".to_owned()),
        (Some(why), Probe::Live) => reply(503, format!("unhealthy: {why}\n")),
        (Some(why), Probe::Ready) => {
            reply(503, format!("not ready: {why}\n")).header("Retry-After", "5")
        }
    }
}

/// Why the registry should get no new work now, if it should not.
fn not_ready(app: &App) -> Option<&'static str> {
    if app.stopping.load(Ordering::Relaxed) {
        return Some("stopping");
    }
    if app.heartbeat.age() > crate::net::watchdog::STUCK_LISTENER {
        return Some("not accepting connections");
    }
    // The ping first: it is what reopens the store after an I/O failure if no request has
    // yet; a reopen that fails (or one under way) leaves the flag set.
    let answers = app.store.ping().is_ok();
    if app.store.reopening() {
        return Some("store reopening");
    }
    if !answers {
        return Some("store not answering");
    }
    match app.store.above_reserve() {
        Ok(true) => None,
        Ok(false) => Some("free space below the reserve"),
        Err(_) => Some("store not answering"),
    }
}
