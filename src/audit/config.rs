//! The audit trail's configuration: `audit: {"maxRecords": 100000, "log": false}`.

use serde::Deserialize;

/// `audit` as written in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditSpec {
    /// `maxRecords`: records kept; the oldest go first.
    pub max_records: Option<u64>,
    /// `log`: also write each record to the log.
    pub log: Option<bool>,
}

/// The audit trail's bound and log switch, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    /// Records kept in the store (at least 1); appending one past it drops the oldest.
    pub max_records: u64,
    /// Each record is also logged (target `audit`) once committed.
    pub log: bool,
}

/// 100,000 records: at 200-400 bytes each in the store 20-40 MB, months of a busy edge site.
pub const DEFAULT_MAX_RECORDS: u64 = 100_000;

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_records: DEFAULT_MAX_RECORDS,
            log: false,
        }
    }
}

/// Validates `audit` (`maxRecords` 1 to 100,000,000).
pub fn resolve(spec: Option<AuditSpec>) -> Result<AuditConfig, String> {
    let d = AuditConfig::default();
    let Some(spec) = spec else {
        return Ok(d);
    };
    let max_records = match spec.max_records {
        None => d.max_records,
        Some(n @ 1..=100_000_000) => n,
        Some(n) => {
            return Err(format!(
                "audit.maxRecords: {n} is out of range (1 to 100000000)"
            ))
        }
    };
    Ok(AuditConfig {
        max_records,
        log: spec.log.unwrap_or(d.log),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_range() {
        assert_eq!(resolve(None).unwrap(), AuditConfig::default());
        let spec: AuditSpec = serde_json::from_str(r#"{"maxRecords": 5, "log": true}"#).unwrap();
        assert_eq!(
            resolve(Some(spec)).unwrap(),
            AuditConfig {
                max_records: 5,
                log: true
            }
        );
        let spec: AuditSpec = serde_json::from_str(r#"{"maxRecords": 0}"#).unwrap();
        assert!(resolve(Some(spec)).is_err());
        assert!(serde_json::from_str::<AuditSpec>(r#"{"max": 5}"#).is_err());
    }
}
