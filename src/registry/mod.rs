//! Registry rules, free of HTTP and of storage: names, tags, references, manifests.

pub mod immutable;
pub mod manifest;
pub mod names;

use crate::digest::{Digest, DigestError};

/// What a manifest URL names: a tag or a digest.
#[derive(Debug, Clone)]
pub enum Reference {
    /// A tag, validated against the spec's grammar.
    Tag(String),
    /// A content digest.
    Digest(Digest),
}

/// Why a reference is not usable.
#[derive(Debug)]
pub enum ReferenceError {
    /// Looks like a digest (has a colon) but is not a valid one.
    Digest(DigestError),
    /// Neither a digest nor a valid tag.
    Tag,
}

impl Reference {
    /// Parses a manifest reference: a digest if it contains `:`, else a tag.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.contains(':') {
            Digest::parse(s)
                .map(Reference::Digest)
                .map_err(ReferenceError::Digest)
        } else if names::valid_tag(s) {
            Ok(Reference::Tag(s.to_owned()))
        } else {
            Err(ReferenceError::Tag)
        }
    }
}

/// Property test settings shared by the parsers' `props` modules: `default` cases, or
/// `PROPTEST_CASES` when set (for longer runs than `./test.sh` can afford).
#[cfg(test)]
pub(crate) fn prop_config(default: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default);
    proptest::test_runner::Config {
        cases,
        ..proptest::test_runner::Config::default()
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(prop_config(512))]

        /// A reference with a colon is a digest or an error; without, a tag exactly when the
        /// tag grammar says so.
        #[test]
        fn reference_is_digest_or_tag(s in "\\PC{0,80}|[a-z0-9:._-]{0,80}") {
            match Reference::parse(&s) {
                Ok(Reference::Digest(d)) => prop_assert_eq!(d.as_str(), s.as_str()),
                Ok(Reference::Tag(t)) => {
                    prop_assert!(!s.contains(':') && names::valid_tag(&t) && t == s)
                }
                Err(ReferenceError::Digest(_)) => prop_assert!(s.contains(':')),
                Err(ReferenceError::Tag) => prop_assert!(!s.contains(':') && !names::valid_tag(&s)),
            }
        }
    }
}
