//! The quotas' configuration: `quotas` (byte budgets per repository pattern) and
//! `maxStoreSize` (one for the whole store).

use super::{Quota, Quotas};
use crate::config::{valid_pattern, Size};
use serde::Deserialize;

/// A `quotas` entry as written: `{"repositories": "plant-a/*", "maxSize": "2GiB"}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QuotaSpec {
    /// Repository name pattern, e.g. `plant-a/*` (`*` matches any run of characters).
    pub repositories: String,
    /// The budget of all the repositories it matches together, e.g. `"2GiB"`.
    pub max_size: Size,
}

/// A size given in the config as a number of bytes or text with a unit (`what` names it).
fn bytes(s: &Size, what: &str) -> Result<u64, String> {
    s.bytes_u64().map_err(|e| format!("{what}: {e}"))
}

/// Resolves `maxStoreSize` and `quotas`.
pub fn resolve(
    max_store_size: Option<Size>,
    quotas: Option<Vec<QuotaSpec>>,
) -> Result<Quotas, String> {
    let store = max_store_size
        .map(|s| bytes(&s, "maxStoreSize"))
        .transpose()?;
    let mut rules: Vec<Quota> = Vec::new();
    for (i, q) in quotas.unwrap_or_default().into_iter().enumerate() {
        let what = format!("quotas entry {} ({:?})", i + 1, q.repositories);
        if !valid_pattern(&q.repositories) {
            return Err(format!(
                "{what}: repositories must be a repository name pattern such as plant-a/*"
            ));
        }
        if rules.iter().any(|r| r.repositories == q.repositories) {
            return Err(format!(
                "{what}: the pattern is given twice: one budget each"
            ));
        }
        rules.push(Quota {
            repositories: q.repositories,
            limit: bytes(&q.max_size, &format!("{what}: maxSize"))?,
        });
    }
    Ok(Quotas { rules, store })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(p: &str, size: &str) -> QuotaSpec {
        QuotaSpec {
            repositories: p.into(),
            max_size: Size::Text(size.into()),
        }
    }

    #[test]
    fn quotas_resolve_and_refuse_what_cannot_be_meant() {
        let q = resolve(
            Some(Size::Text("8GiB".into())),
            Some(vec![spec("plant-a/*", "2GiB"), spec("plant-a/big", "1MiB")]),
        )
        .unwrap();
        assert_eq!(q.store, Some(8 << 30));
        let covering: Vec<_> = q.covering("plant-a/big").map(|r| r.limit).collect();
        assert_eq!(covering, vec![2 << 30, 1 << 20]);
        assert_eq!(q.covering("plant-b/x").count(), 0);
        let twice = resolve(None, Some(vec![spec("a/*", "1"), spec("a/*", "2")]));
        assert!(twice.unwrap_err().contains("twice"));
        let bad = resolve(None, Some(vec![spec("A!", "1")]));
        assert!(bad.unwrap_err().contains("pattern"));
        let unit = resolve(None, Some(vec![spec("a", "1TB")]));
        assert!(unit.unwrap_err().contains("maxSize"));
    }
}
