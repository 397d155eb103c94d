//! Lifecycle rules applied to a repository's images, free of storage: which images expire
//! and by which rule (Amazon ECR's semantics, plus protected tags).

use super::config::{Action, Policy, Rule, Select};
use crate::config::glob;

/// An image as rules see it: a manifest that stands on its own (tagged, or neither listed by
/// an index nor a referrer of a stored manifest).
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    /// Its digest.
    pub digest: &'a str,
    /// Unix seconds of its first push.
    pub pushed: u64,
    /// Its push's number (later pushes have larger ones).
    pub seq: u64,
    /// Its tags.
    pub tags: &'a [String],
}

/// The images of `images` that `policy` expires at unix time `now`, as (index, rule). Rules
/// go by ascending priority; each selects among the images no earlier rule selected (and
/// none with a protected tag), so an image is kept or expired by exactly one rule or none.
pub fn expired<'p>(policy: &'p Policy, images: &[Image], now: u64) -> Vec<(usize, &'p Rule)> {
    let mut claimed: Vec<bool> = images
        .iter()
        .map(|i| i.tags.iter().any(|t| policy.protects(t)))
        .collect();
    let mut out = Vec::new();
    for rule in &policy.rules {
        let mut selected: Vec<usize> = (0..images.len())
            .filter(|&i| !claimed[i] && selects(&rule.select, &images[i]))
            .collect();
        for &i in &selected {
            claimed[i] = true;
        }
        match rule.action {
            Action::KeepLast(n) => {
                // Newest first: by push time, then by push order within a second.
                selected.sort_by(|&a, &b| {
                    let (a, b) = (&images[a], &images[b]);
                    (b.pushed, b.seq).cmp(&(a.pushed, a.seq))
                });
                out.extend(selected.into_iter().skip(n).map(|i| (i, rule)));
            }
            Action::OlderThan(age) => {
                let cutoff = now.saturating_sub(age.as_secs());
                out.extend(
                    selected
                        .into_iter()
                        .filter(|&i| images[i].pushed < cutoff)
                        .map(|i| (i, rule)),
                );
            }
        }
    }
    out.sort_by_key(|&(i, _)| i);
    out
}

fn selects(select: &Select, image: &Image) -> bool {
    match select {
        Select::Any => true,
        Select::Untagged => image.tags.is_empty(),
        Select::Tagged(patterns) => image
            .tags
            .iter()
            .any(|t| patterns.iter().any(|p| glob(p.as_bytes(), t.as_bytes()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gc::config::{resolve, PolicySpec};

    fn policy(json: &str) -> Policy {
        let spec: PolicySpec = serde_json::from_str(json).unwrap();
        resolve(None, None, Some(vec![spec])).unwrap().lifecycle[0].clone()
    }

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    const DAY: u64 = 86400;

    #[test]
    fn keep_last_counts_only_what_it_selects_and_protected_tags_stay() {
        let p = policy(
            r#"{"repositories":"*","protectTags":["stable"],"rules":[
                {"priority":1,"tagStatus":"tagged","tagPatterns":["v*"],"keepLast":2},
                {"priority":2,"tagStatus":"untagged","olderThan":"7d"}]}"#,
        );
        let t: Vec<Vec<String>> = vec![
            tags(&["v1"]),
            tags(&["v2", "stable"]),
            tags(&["v3"]),
            tags(&["v4"]),
            tags(&["dev"]),
            tags(&[]),
            tags(&[]),
        ];
        let pushed = [1, 2, 3, 4, 0, 10 * DAY, 2 * DAY];
        let images: Vec<Image> = (0..t.len())
            .map(|i| Image {
                digest: ["a", "b", "c", "d", "e", "f", "g"][i],
                pushed: pushed[i],
                seq: i as u64,
                tags: &t[i],
            })
            .collect();
        let got: Vec<(usize, u32)> = expired(&p, &images, 12 * DAY)
            .into_iter()
            .map(|(i, r)| (i, r.priority))
            .collect();
        // v1 goes (v3, v4 are the last two; v2 is protected and not counted); dev is selected
        // by no rule; the untagged image pushed 10 days before "now" is older than 7d.
        assert_eq!(got, vec![(0, 1), (6, 2)]);
    }

    #[test]
    fn pushes_within_one_second_keep_their_order() {
        let p = policy(r#"{"repositories":"*","rules":[{"priority":1,"keepLast":1}]}"#);
        let t: Vec<Vec<String>> = (0..3).map(|i| tags(&[&format!("v{i}")])).collect();
        // Digests in the opposite order of the pushes: the push order decides.
        let images: Vec<Image> = (0..3)
            .map(|i| Image {
                digest: ["c", "b", "a"][i],
                pushed: 100,
                seq: i as u64,
                tags: &t[i],
            })
            .collect();
        let got: Vec<usize> = expired(&p, &images, 200).iter().map(|x| x.0).collect();
        assert_eq!(got, vec![0, 1]);
    }

    #[test]
    fn an_image_a_rule_selects_is_not_expired_by_a_later_rule() {
        let p = policy(
            r#"{"repositories":"*","rules":[
                {"priority":5,"tagStatus":"any","olderThan":"1d"},
                {"priority":1,"tagStatus":"tagged","tagPatterns":["keep-*"],"keepLast":10}]}"#,
        );
        let (a, b) = (tags(&["keep-1"]), tags(&["x"]));
        let images = [
            Image {
                digest: "a",
                pushed: 0,
                seq: 1,
                tags: &a,
            },
            Image {
                digest: "b",
                pushed: 0,
                seq: 2,
                tags: &b,
            },
        ];
        let got: Vec<usize> = expired(&p, &images, 5 * DAY).iter().map(|x| x.0).collect();
        assert_eq!(got, vec![1]);
    }

    #[test]
    fn bad_rules_are_refused_with_what_to_fix() {
        let bad = |json: &str, needle: &str| {
            let spec: PolicySpec = serde_json::from_str(json).unwrap();
            let e = resolve(None, None, Some(vec![spec])).unwrap_err();
            assert!(e.contains(needle), "{e}");
        };
        bad(
            r#"{"repositories":"*","rules":[{"priority":1}]}"#,
            "exactly one of keepLast",
        );
        bad(
            r#"{"repositories":"*","rules":[{"priority":1,"keepLast":1},{"priority":1,"keepLast":2}]}"#,
            "two rules have priority 1",
        );
        bad(
            r#"{"repositories":"*","rules":[{"priority":1,"tagStatus":"untagged","tagPatterns":["v*"],"keepLast":1}]}"#,
            "tagPatterns go with",
        );
        bad(
            r#"{"repositories":"*","rules":[{"priority":1,"keepLast":0}]}"#,
            "at least 1",
        );
        bad(
            r#"{"repositories":"*","rules":[{"priority":1,"olderThan":"soon"}]}"#,
            "olderThan",
        );
        bad(
            r#"{"repositories":"A","rules":[{"priority":1,"keepLast":1}]}"#,
            "pattern",
        );
        bad(r#"{"repositories":"*","rules":[]}"#, "at least one rule");
        bad(
            r#"{"repositories":"*","rules":[{"priority":1,"tagPatterns":[],"keepLast":1}]}"#,
            "empty",
        );
        bad(
            r#"{"repositories":"*","rules":[{"priority":1,"tagPatterns":["a b"],"keepLast":1}]}"#,
            "not a tag pattern",
        );
        bad(
            r#"{"repositories":"*","rules":[{"priority":1,"olderThan":"18446744073709551615s"}]}"#,
            "out of range",
        );
        assert!(resolve(None, Some("0s".into()), None)
            .unwrap_err()
            .contains("\"off\""));
        assert!(resolve(None, Some("off".into()), None)
            .unwrap()
            .interval
            .is_none());
    }
}
