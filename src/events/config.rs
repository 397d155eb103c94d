//! Notification endpoints: `notifications: [{"name", "url", "headers", "secretHeaderFile",
//! "repositories", "actions", "timeout", "maxBackoff"}]`.

use crate::config::{glob, parse_duration, valid_pattern};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A `notifications` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSpec {
    /// `name`: the endpoint's name in logs and in its stored cursor.
    pub name: String,
    /// `url`: `http(s)://...` the events are POSTed to.
    pub url: String,
    /// `headers`: sent with every POST.
    pub headers: Option<BTreeMap<String, String>>,
    /// `secretHeaderFile`: a file whose first line is `Name: value`, sent with every POST
    /// (keeps a token out of the config file).
    pub secret_header_file: Option<PathBuf>,
    /// `repositories`: name patterns; events of other repositories are not sent.
    pub repositories: Option<Vec<String>>,
    /// `actions`: `push`, `delete` (default both).
    pub actions: Option<Vec<String>>,
    /// `timeout`: of one POST (default 5s, at most 30s).
    pub timeout: Option<String>,
    /// `maxBackoff`: longest wait between retries (default 5m).
    pub max_backoff: Option<String>,
}

/// A notification endpoint, validated.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// See [`EndpointSpec::name`].
    pub name: String,
    /// See [`EndpointSpec::url`].
    pub url: String,
    /// Headers sent with every POST (with the secret header's, read at start).
    pub headers: Vec<(String, String)>,
    /// Patterns of the repositories whose events are sent (empty: all).
    pub repositories: Vec<String>,
    /// Send push events.
    pub push: bool,
    /// Send delete events.
    pub delete: bool,
    /// Of one POST.
    pub timeout: Duration,
    /// Longest wait between retries.
    pub max_backoff: Duration,
}

impl Endpoint {
    /// True if events of `repo` go to this endpoint.
    pub fn wants_repo(&self, repo: &str) -> bool {
        self.repositories.is_empty()
            || self
                .repositories
                .iter()
                .any(|p| glob(p.as_bytes(), repo.as_bytes()))
    }
}

/// Validates `notifications`.
pub fn resolve(specs: Option<Vec<EndpointSpec>>) -> Result<Vec<Endpoint>, String> {
    let mut out: Vec<Endpoint> = Vec::new();
    for (i, s) in specs.unwrap_or_default().into_iter().enumerate() {
        let what = format!("notifications entry {} ({:?})", i + 1, s.name);
        let name_ok = !s.name.is_empty()
            && s.name.len() <= 64
            && s.name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c));
        if !name_ok {
            return Err(format!(
                "{what}: name must be 1 to 64 letters, digits, '-', '_' or '.'"
            ));
        }
        if out.iter().any(|e| e.name == s.name) {
            return Err(format!("{what}: two endpoints have this name"));
        }
        if !(s.url.starts_with("http://") || s.url.starts_with("https://")) {
            return Err(format!("{what}: url must start with http:// or https://"));
        }
        // Checked now, not at every retry for ever; the URL is not echoed (it may hold a
        // password).
        let uri: ureq::http::Uri = s
            .url
            .parse()
            .map_err(|_| format!("{what}: url is not a valid http(s) URL"))?;
        match uri.authority() {
            None => return Err(format!("{what}: url names no host")),
            Some(a) if a.host().is_empty() => return Err(format!("{what}: url names no host")),
            Some(a) if a.as_str().contains('@') => {
                return Err(format!(
                    "{what}: url holds credentials: send them in headers or secretHeaderFile \
                     (kept out of URLs and logs)"
                ))
            }
            Some(_) => {}
        }
        let mut headers: Vec<(String, String)> =
            s.headers.unwrap_or_default().into_iter().collect();
        if let Some(path) = &s.secret_header_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{what}: secretHeaderFile {}: {e}", path.display()))?;
            let line = text.lines().next().unwrap_or("");
            let (n, v) = line.split_once(':').ok_or_else(|| {
                format!(
                    "{what}: secretHeaderFile {}: its first line must be `Name: value`",
                    path.display()
                )
            })?;
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
        for (n, v) in &headers {
            let bad = |c: u8| c.is_ascii_control() || c == b':' || c == b' ';
            if n.is_empty() || n.bytes().any(bad) || v.bytes().any(|c| c.is_ascii_control()) {
                return Err(format!("{what}: header {n:?} is not a valid HTTP header"));
            }
        }
        let repositories = s.repositories.unwrap_or_default();
        if let Some(p) = repositories.iter().find(|p| !valid_pattern(p)) {
            return Err(format!(
                "{what}: repositories: {p:?} is not a repository name pattern such as fleet/*"
            ));
        }
        let actions = s
            .actions
            .unwrap_or_else(|| vec!["push".into(), "delete".into()]);
        if let Some(a) = actions
            .iter()
            .find(|a| !matches!(a.as_str(), "push" | "delete"))
        {
            return Err(format!("{what}: actions: {a:?} is neither push nor delete"));
        }
        let duration = |v: Option<String>, default: u64, max: u64, key: &str| match v {
            None => Ok(Duration::from_secs(default)),
            Some(t) => match parse_duration(&t) {
                Ok(d) if (1..=max).contains(&d.as_secs()) => Ok(d),
                Ok(_) => Err(format!(
                    "{what}: {key}: {t:?} is out of range (1s to {max}s)"
                )),
                Err(e) => Err(format!("{what}: {key}: {e}")),
            },
        };
        out.push(Endpoint {
            // A stop waits for a POST under way: at most 30 s, well within systemd's 90 s.
            timeout: duration(s.timeout, 5, 30, "timeout")?,
            max_backoff: duration(s.max_backoff, 300, 86400, "maxBackoff")?,
            name: s.name,
            url: s.url,
            headers,
            repositories,
            push: actions.iter().any(|a| a == "push"),
            delete: actions.iter().any(|a| a == "delete"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<Vec<Endpoint>, String> {
        resolve(Some(vec![serde_json::from_str(json).unwrap()]))
    }

    #[test]
    fn endpoints_resolve_and_refuse_what_cannot_be_meant() {
        let e = spec(
            r#"{"name": "agent", "url": "http://127.0.0.1:9/x", "repositories": ["fleet/*"],
                "actions": ["push"], "headers": {"Authorization": "Bearer t"}}"#,
        )
        .unwrap();
        assert!(e[0].push && !e[0].delete);
        assert!(e[0].wants_repo("fleet/a") && !e[0].wants_repo("other"));
        assert_eq!(e[0].timeout, Duration::from_secs(5));
        assert!(spec(r#"{"name": "a", "url": "ftp://x"}"#).is_err());
        for bad in ["http://", "http://exa mple/x y", "http://u:pw@host/x"] {
            let e = spec(&format!(r#"{{"name": "a", "url": "{bad}"}}"#)).unwrap_err();
            assert!(!e.contains("pw@"), "{e}");
        }
        assert!(spec(r#"{"name": "a b", "url": "http://x"}"#).is_err());
        assert!(spec(r#"{"name": "a", "url": "http://x", "actions": ["pull"]}"#).is_err());
        assert!(spec(r#"{"name": "a", "url": "http://x", "timeout": "0s"}"#).is_err());
        let two = r#"{"name": "a", "url": "http://x"}"#;
        let two = vec![
            serde_json::from_str(two).unwrap(),
            serde_json::from_str(two).unwrap(),
        ];
        assert!(resolve(Some(two)).is_err());
    }
}
