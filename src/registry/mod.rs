//! Registry rules, free of HTTP and of storage: names, tags, references, manifests.

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
