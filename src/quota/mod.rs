//! Quotas: byte budgets per repository pattern (`quotas`) and for the whole store
//! (`maxStoreSize`), charged on unique bytes per encryption domain. Free of storage and HTTP:
//! the store keeps the usage counters and enforces them in its write transactions.

pub mod config;

use crate::config::glob;
use std::fmt;

/// One budget: the repositories whose names match `repositories`, together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    /// Repository name pattern (`*` matches any run of characters, `/` included).
    pub repositories: String,
    /// Bytes the repositories it covers may hold together.
    pub limit: u64,
}

impl Quota {
    /// True if the quota covers repository `name`.
    pub fn covers(&self, name: &str) -> bool {
        glob(self.repositories.as_bytes(), name.as_bytes())
    }
}

/// Every configured budget.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quotas {
    /// `quotas`: each applies to every repository it matches (not only the first match), so
    /// budgets may nest (`plant-a/*` and `plant-a/big`).
    pub rules: Vec<Quota>,
    /// `maxStoreSize`: bytes the whole store may hold.
    pub store: Option<u64>,
}

impl Quotas {
    /// The quotas covering repository `name`.
    pub fn covering<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Quota> + 'a {
        self.rules.iter().filter(move |q| q.covers(name))
    }
}

/// How the store-wide budget is named in errors and reports (never a repository pattern:
/// patterns are lower case).
pub const STORE: &str = "maxStoreSize";

/// A push refused because it would take a quota past its limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// The quota's pattern, or `STORE`.
    pub quota: String,
    /// Its limit, bytes.
    pub limit: u64,
    /// Bytes it held before this push.
    pub used: u64,
    /// Bytes this push would add to it.
    pub needs: u64,
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::units::human;
        let name = if self.quota == STORE {
            STORE.to_owned()
        } else {
            format!("{:?}", self.quota)
        };
        write!(
            f,
            "quota {name} ({}) exceeded: {} used, this push needs {} more",
            human(self.limit),
            human(self.used),
            human(self.needs)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_quota_its_use_and_its_limit() {
        let e = Exceeded {
            quota: "plant-a/*".into(),
            limit: 2 << 30,
            used: 1900 << 20,
            needs: 200 << 20,
        };
        assert_eq!(
            e.to_string(),
            "quota \"plant-a/*\" (2.00 GiB) exceeded: 1.86 GiB used, this push needs 200.0 MiB more"
        );
        let s = Exceeded {
            quota: STORE.into(),
            ..e
        };
        assert!(s.to_string().starts_with("quota maxStoreSize (2.00 GiB)"));
    }
}
