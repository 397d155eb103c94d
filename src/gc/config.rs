//! The collector's and the lifecycle rules' configuration: `gcGracePeriod`, `gcInterval`,
//! `lifecycle`.

use crate::config::{glob, parse_duration, valid_pattern};
use crate::registry::names::valid_tag_pattern;
use serde::Deserialize;
use std::time::Duration;

/// What the collector does and when, validated.
#[derive(Debug, Clone)]
pub struct GcConfig {
    /// `gcGracePeriod`: a blob link no manifest lists goes once it is older than this.
    pub grace: Duration,
    /// `gcInterval`: a pass runs this long after start and then every interval (None: only
    /// on demand).
    pub interval: Option<Duration>,
    /// `lifecycle`: which images expire, per repository pattern (the first that matches).
    pub lifecycle: Vec<Policy>,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            grace: Duration::from_secs(24 * 3600),
            interval: Some(Duration::from_secs(3600)),
            lifecycle: Vec::new(),
        }
    }
}

impl GcConfig {
    /// The lifecycle policy of repository `name`, if one matches.
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.lifecycle
            .iter()
            .find(|p| glob(p.repositories.as_bytes(), name.as_bytes()))
    }
}

/// A `lifecycle` entry: the rules of the repositories matching `repositories`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// A repository name pattern (`*` matches any run of characters).
    pub repositories: String,
    /// Tag patterns of images no rule expires (and no rule counts).
    pub protect: Vec<String>,
    /// Rules, by ascending priority.
    pub rules: Vec<Rule>,
}

impl Policy {
    /// True if tag `t` is protected.
    pub fn protects(&self, t: &str) -> bool {
        self.protect
            .iter()
            .any(|p| glob(p.as_bytes(), t.as_bytes()))
    }
}

/// One lifecycle rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Lower goes first; an image a rule selects is not seen by later rules.
    pub priority: u32,
    /// How reports name it: `rule 1 (keep the last 5 v*)` or the config's description.
    pub description: String,
    /// Which images it selects.
    pub select: Select,
    /// What happens to them.
    pub action: Action,
}

/// Which images a rule selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    /// Images with a tag matching one of these patterns.
    Tagged(Vec<String>),
    /// Images with no tag.
    Untagged,
    /// Every image.
    Any,
}

/// What a rule does to the images it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The N most recently pushed stay; the rest expire.
    KeepLast(usize),
    /// Those pushed longer ago than this expire.
    OlderThan(Duration),
}

/// A `lifecycle` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    /// Repository name pattern, e.g. `fleet/*`.
    pub repositories: String,
    /// Tag patterns never expired, e.g. `["stable", "latest"]`.
    #[serde(default)]
    pub protect_tags: Vec<String>,
    /// The rules.
    pub rules: Vec<RuleSpec>,
}

/// A lifecycle rule as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    /// Order among the entry's rules, lowest first; unique within the entry.
    pub priority: u32,
    /// Free text shown in reports.
    pub description: Option<String>,
    /// `tagged`, `untagged` or `any` (default).
    pub tag_status: Option<String>,
    /// With `tagged`: tag patterns (default every tag).
    pub tag_patterns: Option<Vec<String>>,
    /// Keep this many most recently pushed selected images.
    pub keep_last: Option<usize>,
    /// Expire selected images pushed longer ago than this, e.g. `"30d"`.
    pub older_than: Option<String>,
}

/// The longest `olderThan`.
const CENTURY: Duration = Duration::from_secs(36500 * 86400);

/// Resolves `gcGracePeriod`, `gcInterval` and `lifecycle`.
pub fn resolve(
    grace: Option<String>,
    interval: Option<String>,
    lifecycle: Option<Vec<PolicySpec>>,
) -> Result<GcConfig, String> {
    let d = GcConfig::default();
    let year = Duration::from_secs(366 * 86400);
    let grace = match grace {
        None => d.grace,
        Some(t) => match parse_duration(&t) {
            Ok(g) if g <= year => g,
            Ok(_) => return Err(format!("gcGracePeriod: {t:?} is out of range (0s to 366d)")),
            Err(e) => return Err(format!("gcGracePeriod: {e}")),
        },
    };
    let interval = match interval.as_deref() {
        None => d.interval,
        Some("off") => None,
        Some(t) => match parse_duration(t) {
            Ok(i) if i >= Duration::from_secs(1) && i <= year => Some(i),
            Ok(_) => {
                return Err(format!(
                    "gcInterval: {t:?} is out of range (1s to 366d, or \"off\")"
                ))
            }
            Err(e) => return Err(format!("gcInterval: {e} (or \"off\")")),
        },
    };
    let lifecycle = lifecycle
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, p)| p.resolve(i + 1))
        .collect::<Result<_, _>>()?;
    Ok(GcConfig {
        grace,
        interval,
        lifecycle,
    })
}

impl PolicySpec {
    fn resolve(self, n: usize) -> Result<Policy, String> {
        let what = format!("lifecycle entry {n} ({:?})", self.repositories);
        if !valid_pattern(&self.repositories) {
            return Err(format!(
                "{what}: repositories must be a repository name pattern such as fleet/*"
            ));
        }
        for p in &self.protect_tags {
            if !valid_tag_pattern(p) {
                return Err(format!(
                    "{what}: protectTags: {p:?} is not a tag pattern (a-z A-Z 0-9 _ . - and *)"
                ));
            }
        }
        if self.rules.is_empty() {
            return Err(format!("{what}: rules: give at least one rule"));
        }
        let mut rules = Vec::new();
        for r in self.rules {
            let rule = r.resolve(&what)?;
            if rules.iter().any(|o: &Rule| o.priority == rule.priority) {
                return Err(format!(
                    "{what}: two rules have priority {}: each needs its own",
                    rule.priority
                ));
            }
            rules.push(rule);
        }
        rules.sort_by_key(|r| r.priority);
        Ok(Policy {
            repositories: self.repositories,
            protect: self.protect_tags,
            rules,
        })
    }
}

impl RuleSpec {
    fn resolve(self, entry: &str) -> Result<Rule, String> {
        let what = format!("{entry}, rule with priority {}", self.priority);
        let select = match (self.tag_status.as_deref(), self.tag_patterns) {
            (Some("tagged"), None) => Select::Tagged(vec!["*".into()]),
            // tagPatterns alone mean tagged.
            (Some("tagged") | None, Some(p)) => {
                if p.is_empty() {
                    return Err(format!(
                        "{what}: tagPatterns is empty (leave it out for every tag)"
                    ));
                }
                if let Some(bad) = p.iter().find(|p| !valid_tag_pattern(p)) {
                    return Err(format!(
                        "{what}: tagPatterns: {bad:?} is not a tag pattern (a-z A-Z 0-9 _ . - and *)"
                    ));
                }
                Select::Tagged(p)
            }
            (Some("untagged"), None) => Select::Untagged,
            (Some("any") | None, None) => Select::Any,
            (Some(s @ ("untagged" | "any")), Some(_)) => {
                return Err(format!(
                    "{what}: tagPatterns go with tagStatus \"tagged\", not {s:?}"
                ))
            }
            (Some(s), _) => {
                return Err(format!(
                    "{what}: tagStatus {s:?} is not tagged, untagged or any"
                ))
            }
        };
        let action = match (self.keep_last, self.older_than) {
            (Some(0), None) => {
                return Err(format!(
                    "{what}: keepLast must be at least 1 (olderThan \"0s\" expires all)"
                ))
            }
            (Some(n), None) => Action::KeepLast(n),
            (None, Some(t)) => match parse_duration(&t) {
                Ok(d) if d <= CENTURY => Action::OlderThan(d),
                Ok(_) => {
                    return Err(format!(
                        "{what}: olderThan: {t:?} is out of range (0s to 36500d)"
                    ))
                }
                Err(e) => return Err(format!("{what}: olderThan: {e}")),
            },
            _ => {
                return Err(format!(
                    "{what}: give exactly one of keepLast and olderThan"
                ))
            }
        };
        let description = self.description.unwrap_or_else(|| {
            let which = match &select {
                Select::Tagged(p) => format!("tagged {}", p.join(" ")),
                Select::Untagged => "untagged".into(),
                Select::Any => "any".into(),
            };
            match action {
                Action::KeepLast(n) => format!("keep the last {n} {which}"),
                Action::OlderThan(d) => format!("expire {which} older than {}", words(d)),
            }
        });
        Ok(Rule {
            priority: self.priority,
            description,
            select,
            action,
        })
    }
}

/// `3d`, `12h`, `90s`: a duration as a config would give it.
pub fn words(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
