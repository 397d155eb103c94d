//! Immutable tags (`immutableTags`): per repository pattern, with exceptions, tags that a push
//! may set but never move to another manifest.

use crate::config::{glob, valid_pattern};
use serde::Deserialize;

/// An `immutableTags` rule, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImmutableRule {
    /// Its position in the config (from 1), for messages.
    pub n: usize,
    /// Repository name pattern.
    pub repositories: String,
    /// Tag patterns that stay mutable, e.g. `latest`.
    pub except: Vec<String>,
}

/// An `immutableTags` rule as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImmutableSpec {
    /// Repository name pattern, e.g. `fleet/*`.
    pub repositories: String,
    /// Tag patterns left mutable, e.g. `["latest", "dev-*"]`.
    #[serde(default)]
    pub except: Vec<String>,
}

impl ImmutableSpec {
    /// Validates the `n`th rule.
    pub fn resolve(self, n: usize) -> Result<ImmutableRule, String> {
        let what = format!("immutableTags rule {n} ({:?})", self.repositories);
        if !valid_pattern(&self.repositories) {
            return Err(format!(
                "{what}: repositories must be a repository name pattern such as fleet/*"
            ));
        }
        for p in &self.except {
            if !super::names::valid_tag_pattern(p) {
                return Err(format!(
                    "{what}: except: {p:?} is not a tag pattern (a-z A-Z 0-9 _ . - and *)"
                ));
            }
        }
        Ok(ImmutableRule {
            n,
            repositories: self.repositories,
            except: self.except,
        })
    }
}

/// The rule (described for messages) that makes tag `tag` of repository `repo` immutable:
/// the first rule whose pattern matches the repository decides.
pub fn rule_for(rules: &[ImmutableRule], repo: &str, tag: &str) -> Option<String> {
    let r = rules
        .iter()
        .find(|r| glob(r.repositories.as_bytes(), repo.as_bytes()))?;
    if r.except.iter().any(|p| glob(p.as_bytes(), tag.as_bytes())) {
        return None;
    }
    Some(format!("immutableTags rule {} for {}", r.n, r.repositories))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_decides_and_exceptions_stay_mutable() {
        let spec = |r: &str, e: &[&str]| ImmutableSpec {
            repositories: r.into(),
            except: e.iter().map(|s| s.to_string()).collect(),
        };
        let rules = vec![
            spec("fleet/dev", &["*"]).resolve(1).unwrap(),
            spec("fleet/*", &["latest", "dev-*"]).resolve(2).unwrap(),
        ];
        assert_eq!(rule_for(&rules, "fleet/dev", "v1"), None);
        assert!(rule_for(&rules, "fleet/app", "v1")
            .unwrap()
            .contains("rule 2"));
        assert_eq!(rule_for(&rules, "fleet/app", "latest"), None);
        assert_eq!(rule_for(&rules, "fleet/app", "dev-3"), None);
        assert_eq!(rule_for(&rules, "other/app", "v1"), None);
        assert!(spec("Fleet", &[]).resolve(1).is_err());
        assert!(spec("fleet/*", &["a b"]).resolve(1).is_err());
    }
}
