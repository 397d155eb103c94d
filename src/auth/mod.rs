//! Who may do what, free of HTTP: access rules, password hashes, signed bearer tokens.

pub mod limiter;
pub mod passwords;
pub mod rules;
pub mod tokens;

pub use rules::{Access, Action, Principal};

/// A user name: 1 to 64 of `a-z A-Z 0-9 . _ @ -`, not one of the words rules reserve.
pub fn valid_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
        && !Principal::RESERVED.contains(&name)
}
