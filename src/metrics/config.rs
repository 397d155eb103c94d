//! The `metrics` configuration: who may scrape `/metrics`, and an optional listener of its own.

use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddr};

/// `metrics`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `users`: users (besides admins) who may read `/metrics` on the main listener.
    pub users: Vec<String>,
    /// `listen`: a plain-HTTP listener serving `/metrics`, `/healthz` and `/readyz` to anyone
    /// (None: none, so nothing binds by default).
    pub listen: Option<SocketAddr>,
}

/// `metrics` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSpec {
    users: Option<Vec<String>>,
    listen: Option<String>,
}

impl MetricsSpec {
    /// Checks the user names and the address (a bare port means loopback).
    pub fn resolve(self) -> Result<MetricsConfig, String> {
        let users = self.users.unwrap_or_default();
        for u in &users {
            if !crate::auth::valid_user_name(u) {
                return Err(format!(
                    "metrics.users: {u:?} is not a user name (1-64 of a-z A-Z 0-9 . _ @ -)"
                ));
            }
        }
        let listen = match self.listen.as_deref().map(str::trim) {
            None => None,
            Some(a) => Some(parse_listen(a).ok_or_else(|| {
                format!(
                    "metrics.listen: {a:?} is not an address such as 127.0.0.1:9102, \
                     [::1]:9102 or a bare port (9102: loopback)"
                )
            })?),
        };
        Ok(MetricsConfig { users, listen })
    }
}

/// `host:port`, or a bare port on loopback.
fn parse_listen(a: &str) -> Option<SocketAddr> {
    if let Ok(port) = a.parse::<u16>() {
        return Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    a.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(json: &str) -> Result<MetricsConfig, String> {
        serde_json::from_str::<MetricsSpec>(json)
            .map_err(|e| e.to_string())?
            .resolve()
    }

    #[test]
    fn users_listen_and_refusals() {
        assert_eq!(resolve("{}").unwrap(), MetricsConfig::default());
        let c = resolve(r#"{"users": ["prom"], "listen": "9102"}"#).unwrap();
        assert_eq!(c.users, ["prom"]);
        assert_eq!(c.listen, Some("127.0.0.1:9102".parse().unwrap()));
        let c = resolve(r#"{"listen": "[::1]:0"}"#).unwrap();
        assert_eq!(c.listen, Some("[::1]:0".parse().unwrap()));
        let e = resolve(r#"{"listen": "localhost"}"#).unwrap_err();
        assert!(e.contains("metrics.listen"), "{e}");
        let e = resolve(r#"{"users": ["a b"]}"#).unwrap_err();
        assert!(e.contains("metrics.users"), "{e}");
        let e = resolve(r#"{"user": ["prom"]}"#).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }
}
