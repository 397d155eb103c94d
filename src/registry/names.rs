//! The spec's grammar for repository names and tags.

/// Longest repository name accepted (the spec lets registries cap it; distribution uses 255).
pub const MAX_NAME_LEN: usize = 255;

/// True if `name` matches `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
pub fn valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN && !name.is_empty() && name.split('/').all(valid_component)
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // a separator run: ".", "_", "__" or one or more "-"
        let start = i;
        let sep = b[i];
        while i < b.len() && b[i] == sep {
            i += 1;
        }
        let ok = match sep {
            b'.' => i - start == 1,
            b'_' => i - start <= 2,
            b'-' => true,
            _ => false,
        };
        // One separator between alphanumerics: "a-_b" or "a._b" are two.
        if !ok || !b.get(i).is_some_and(|&x| alnum(x)) {
            return false;
        }
    }
    true
}

/// True if `tag` matches `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "library/alpine", "a.b_c__d---e/f0", "x/y/z"] {
            assert!(valid_name(ok), "{ok}");
        }
        let long = "a".repeat(256);
        for bad in [
            "", "A", "a/", "/a", "a//b", "a..b", "a___b", "-a", "a-", "a/../b", "a%2fb", "a b",
            "a-_b", "a._b", "a_.b", "a.-b", "a__-b", &long,
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn tags() {
        assert!(valid_tag("latest"));
        assert!(valid_tag("_v1.2-rc.3"));
        assert!(valid_tag(&"a".repeat(128)));
        for bad in ["", ".x", "-x", "a/b", "a:b", &"a".repeat(129)] {
            assert!(!valid_tag(bad), "{bad}");
        }
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::registry::prop_config;
    use proptest::prelude::*;

    /// The spec's grammars, as regular expressions: the oracle the hand-written checks must
    /// agree with.
    const NAME: &str = r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$";
    const TAG: &str = r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$";

    proptest! {
        #![proptest_config(prop_config(1024))]

        /// On any text (mostly the grammar's own characters, so that near misses are
        /// common), `valid_name` agrees with the spec's regular expression and length cap.
        #[test]
        fn names_agree_with_the_grammar(s in "[a-z0-9._/-]{0,40}|[a-zA-Z0-9._/ %-]{0,300}|\\PC{0,20}") {
            let re = regex_lite::Regex::new(NAME).unwrap();
            prop_assert_eq!(valid_name(&s), s.len() <= MAX_NAME_LEN && re.is_match(&s), "{:?}", s);
        }

        /// Names generated from the grammar are accepted (up to the length cap).
        #[test]
        fn grammar_names_are_accepted(s in "[a-z0-9]{1,5}((\\.|_|__|-{1,3})[a-z0-9]{1,5}){0,3}(/[a-z0-9]{1,5}((\\.|_|__|-{1,3})[a-z0-9]{1,5}){0,3}){0,3}") {
            prop_assert!(valid_name(&s), "{:?}", s);
        }

        /// On any text, `valid_tag` agrees with the spec's regular expression.
        #[test]
        fn tags_agree_with_the_grammar(s in "[a-zA-Z0-9._-]{0,130}|[a-zA-Z0-9._:/ -]{0,10}|\\PC{0,20}") {
            let re = regex_lite::Regex::new(TAG).unwrap();
            prop_assert_eq!(valid_tag(&s), re.is_match(&s), "{:?}", s);
        }
    }
}

/// A tag pattern (immutable tags, lifecycle rules): 1 to 128 of a tag's characters or `*`.
pub fn valid_tag_pattern(p: &str) -> bool {
    (1..=128).contains(&p.len())
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'*'))
}
