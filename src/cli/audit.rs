//! `outpost audit`: the audit trail (or pull counts) of the registry serving the store, or
//! of the store itself.

use super::output::out;
use super::{call, reach, Login, Reach};
use crate::audit::{Filter, Record, DEFAULT_LIMIT};
use crate::config::Config;
use serde_json::Value;

/// What `outpost audit` was asked for.
#[derive(Debug, Clone)]
pub struct Query {
    since: Option<String>,
    repo: Option<String>,
    user: Option<String>,
    pulls: bool,
    json: bool,
}

impl Query {
    /// Checks the options: `--since` must parse; `--pulls` takes only `--repo`.
    pub fn new(
        since: Option<String>,
        repo: Option<String>,
        user: Option<String>,
        pulls: bool,
        json: bool,
    ) -> Result<Query, String> {
        if let Some(s) = &since {
            crate::audit::parse_since(s, 0).map_err(|e| format!("--since: {e}"))?;
        }
        if pulls && (since.is_some() || user.is_some()) {
            return Err("audit --pulls takes --repo only (pulls are counted, not logged)".into());
        }
        Ok(Query {
            since,
            repo,
            user,
            pulls,
            json,
        })
    }

    /// The admin API path answering this query.
    fn path(&self) -> String {
        let mut q = Vec::new();
        if !self.pulls {
            if let Some(s) = &self.since {
                q.push(format!("since={}", encode(s)));
            }
            if let Some(u) = &self.user {
                q.push(format!("user={}", encode(u)));
            }
        }
        if let Some(r) = &self.repo {
            q.push(format!("repo={}", encode(r)));
        }
        let base = if self.pulls {
            "/admin/pulls"
        } else {
            "/admin/audit"
        };
        if q.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", q.join("&"))
        }
    }
}

/// Percent-encodes what a query value cannot hold as it is.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `outpost audit [--since T] [--repo R] [--user U] [--pulls] [--json]`.
pub fn audit(config: &Config, login: &Login, q: &Query) -> Result<(), String> {
    let fail = |e: crate::storage::StoreError| format!("audit: {e}");
    let answer = match reach(config, login)? {
        Reach::Online(at) => call(&at, "GET", &q.path(), None, 200)?,
        Reach::Offline(store, _) if q.pulls => {
            let pulls = store.pulls(q.repo.as_deref()).map_err(fail)?;
            let pulls: Vec<_> = pulls.iter().map(|p| p.to_json()).collect();
            serde_json::json!({ "pulls": pulls })
        }
        Reach::Offline(store, _) => {
            let now = crate::clock::unix_now();
            let filter = Filter {
                since: q
                    .since
                    .as_deref()
                    .map(|s| crate::audit::parse_since(s, now))
                    .transpose()?,
                repo: q.repo.clone(),
                user: q.user.clone(),
                limit: DEFAULT_LIMIT,
            };
            let records = store.audit_records(&filter).map_err(fail)?;
            let records: Vec<_> = records.iter().map(Record::to_json).collect();
            serde_json::json!({ "records": records })
        }
    };
    if q.json {
        out!("{answer:#}");
        return Ok(());
    }
    if q.pulls {
        out!(
            "{:<40} {:<30} {:>8} LAST PULLED",
            "REPOSITORY",
            "REFERENCE",
            "PULLS"
        );
        for p in answer["pulls"].as_array().cloned().unwrap_or_default() {
            let t = |k: &str| p[k].as_str().unwrap_or("?").to_owned();
            out!(
                "{:<40} {:<30} {:>8} {}",
                t("repository"),
                t("reference"),
                p["count"],
                t("lastPulled")
            );
        }
        return Ok(());
    }
    for r in answer["records"].as_array().cloned().unwrap_or_default() {
        // Read back with its time as text: shown as the API gave it.
        let mut r: Value = r;
        let time = r["time"].take();
        r["time"] = 0.into();
        match serde_json::from_value::<Record>(r) {
            Ok(rec) => {
                let line = rec.line();
                let rest = line.split_once(' ').map_or("", |(_, rest)| rest);
                out!("{} {rest}", time.as_str().unwrap_or("?"));
            }
            Err(e) => return Err(format!("audit: unexpected answer: {e}")),
        }
    }
    Ok(())
}
