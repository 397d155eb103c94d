//! Bearer tokens for Docker's token flow: the grant (subject, expiry, scopes) as JSON, signed
//! with HMAC-SHA256 under a key that lives only in memory (a restart signs clients out; they
//! fetch a new token on their next 401, as they do when one expires).

use super::Action;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ring::hmac;
use serde_json::{json, Value};

/// Longest token accepted, bytes (a grant carries at most `MAX_SCOPES` scopes).
const MAX_TOKEN_LEN: usize = 16 << 10;
/// Most scopes one token request may ask for.
pub const MAX_SCOPES: usize = 32;

/// The scope that grants the admin API (to admins only).
pub const ADMIN_SCOPE: &str = "registry:admin:*";

/// What a token grants: who it was issued to, until when, and which scopes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grant {
    /// The user; `None` for an anonymous token.
    pub sub: Option<String>,
    /// The user's credentials when the token was issued (`TokenKey::stamp`): a token stops
    /// working when its user is removed or changes password.
    pub stamp: Option<String>,
    /// Unix seconds after which the token is refused.
    pub exp: u64,
    /// Repositories and the actions granted in each.
    pub repositories: Vec<(String, Vec<Action>)>,
    /// The admin API (`registry:admin:*`), asked for by an admin.
    pub admin: bool,
}

impl Grant {
    /// True if the grant covers `action` in `repo`.
    pub fn covers(&self, repo: &str, action: Action) -> bool {
        self.repositories
            .iter()
            .any(|(r, acts)| r == repo && acts.contains(&action))
    }

    /// The scopes as Docker writes them: `repository:NAME:pull,push` separated by spaces.
    pub fn scope_text(&self) -> String {
        let admin = self.admin.then(|| ADMIN_SCOPE.to_owned());
        self.repositories
            .iter()
            .map(|(r, a)| scope(r, a))
            .chain(admin)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `repository:NAME:ACTIONS`.
pub fn scope(repo: &str, actions: &[Action]) -> String {
    let words: Vec<&str> = actions.iter().map(|a| a.word()).collect();
    format!("repository:{repo}:{}", words.join(","))
}

/// Parses one `repository:NAME:ACTIONS` scope (`*` meaning every action). Other resource
/// types (`registry:catalog:*`) and unknown actions are skipped: they grant nothing here.
pub fn parse_scope(s: &str) -> Option<(String, Vec<Action>)> {
    let rest = s.strip_prefix("repository:")?;
    let (name, actions) = rest.rsplit_once(':')?;
    if !crate::registry::names::valid_name(name) {
        return None;
    }
    let mut acts: Vec<Action> = Vec::new();
    for word in actions.split(',') {
        let add = match word {
            "*" => Action::ALL.to_vec(),
            w => Action::parse(w).into_iter().collect(),
        };
        for a in add {
            if !acts.contains(&a) {
                acts.push(a);
            }
        }
    }
    Some((name.to_owned(), acts))
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token of ours, or altered.
    Invalid,
    /// Past its expiry.
    Expired,
}

/// The signing key, random per process.
pub struct TokenKey(hmac::Key);

impl TokenKey {
    /// A fresh random key.
    pub fn generate() -> TokenKey {
        let raw: [u8; 32] = crate::crypto::random();
        TokenKey(hmac::Key::new(hmac::HMAC_SHA256, &raw))
    }

    /// A short keyed digest of `user`'s stored password hash: what a token remembers of its
    /// user's credentials (it reveals nothing about the hash, and cannot be made without
    /// the key).
    pub fn stamp(&self, user: &str, hash: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        for part in [b"user-stamp".as_slice(), user.as_bytes(), hash.as_bytes()] {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part);
        }
        B64URL.encode(&ctx.sign().as_ref()[..16])
    }

    /// The signed token for `grant`, issued at `now` (unix seconds).
    pub fn issue(&self, grant: &Grant, now: u64) -> String {
        let mut access: Vec<Value> = grant
            .repositories
            .iter()
            .map(|(name, acts)| {
                json!({"type": "repository", "name": name,
                       "actions": acts.iter().map(|a| a.word()).collect::<Vec<_>>()})
            })
            .collect();
        if grant.admin {
            access.push(json!({"type": "registry", "name": "admin", "actions": ["*"]}));
        }
        let claims = json!({"sub": grant.sub, "stamp": grant.stamp, "iat": now,
                            "exp": grant.exp, "access": access});
        let body = B64URL.encode(claims.to_string());
        let tag = hmac::sign(&self.0, body.as_bytes());
        format!("{body}.{}", B64URL.encode(tag.as_ref()))
    }

    /// The grant in `token` if it is ours, unaltered (constant-time check) and not expired.
    pub fn verify(&self, token: &str, now: u64) -> Result<Grant, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let (body, tag) = token.split_once('.').ok_or(TokenError::Invalid)?;
        let tag = B64URL.decode(tag).map_err(|_| TokenError::Invalid)?;
        hmac::verify(&self.0, body.as_bytes(), &tag).map_err(|_| TokenError::Invalid)?;
        let claims: Value = B64URL
            .decode(body)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Invalid)?;
        let exp = claims["exp"].as_u64().ok_or(TokenError::Invalid)?;
        if now > exp {
            return Err(TokenError::Expired);
        }
        let access = claims["access"].as_array().ok_or(TokenError::Invalid)?;
        let admin = access
            .iter()
            .any(|a| a["type"] == "registry" && a["name"] == "admin");
        let repositories = access
            .iter()
            .filter(|a| a["type"] == "repository")
            .filter_map(|a| {
                let acts = a["actions"].as_array()?;
                Some((
                    a["name"].as_str()?.to_owned(),
                    acts.iter()
                        .filter_map(|w| w.as_str().and_then(Action::parse))
                        .collect(),
                ))
            })
            .collect();
        Ok(Grant {
            sub: claims["sub"].as_str().map(str::to_owned),
            stamp: claims["stamp"].as_str().map(str::to_owned),
            exp,
            repositories,
            admin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_expire_tamper() {
        let key = TokenKey::generate();
        let grant = Grant {
            sub: Some("alice".into()),
            stamp: Some(key.stamp("alice", "$hash")),
            exp: 1000,
            repositories: vec![("team/app".into(), vec![Action::Pull, Action::Push])],
            admin: false,
        };
        assert_ne!(key.stamp("alice", "$hash"), key.stamp("alice", "$other"));
        assert_ne!(key.stamp("alice", "$hash"), key.stamp("alicE", "$hash"));
        let admin = Grant {
            admin: true,
            ..grant.clone()
        };
        assert_eq!(key.verify(&key.issue(&admin, 900), 900), Ok(admin.clone()));
        assert!(admin.scope_text().ends_with(" registry:admin:*"));
        let t = key.issue(&grant, 900);
        assert_eq!(key.verify(&t, 1000), Ok(grant.clone()));
        assert_eq!(key.verify(&t, 1001), Err(TokenError::Expired));
        assert_eq!(
            TokenKey::generate().verify(&t, 900),
            Err(TokenError::Invalid)
        );
        let (body, tag) = t.split_once('.').unwrap();
        let forged = B64URL.encode(
            String::from_utf8(B64URL.decode(body).unwrap())
                .unwrap()
                .replace("alice", "admin"),
        );
        assert_eq!(
            key.verify(&format!("{forged}.{tag}"), 900),
            Err(TokenError::Invalid)
        );
        assert!(
            grant.covers("team/app", Action::Push) && !grant.covers("team/app", Action::Delete)
        );
        assert_eq!(grant.scope_text(), "repository:team/app:pull,push");
    }

    #[test]
    fn scopes() {
        assert_eq!(
            parse_scope("repository:a/b:pull,push"),
            Some(("a/b".into(), vec![Action::Pull, Action::Push]))
        );
        assert_eq!(
            parse_scope("repository:a:*").unwrap().1,
            Action::ALL.to_vec()
        );
        assert_eq!(
            parse_scope("repository:a:pull,bogus").unwrap().1,
            vec![Action::Pull]
        );
        assert_eq!(parse_scope("registry:catalog:*"), None);
        assert_eq!(parse_scope("repository:A B:pull"), None);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::registry::prop_config;
    use proptest::prelude::*;

    fn grant() -> impl Strategy<Value = Grant> {
        let repo = (
            "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}",
            proptest::sample::subsequence(Action::ALL.to_vec(), 0..=3),
        );
        (
            proptest::option::of("\\PC{0,20}"),
            proptest::option::of("[A-Za-z0-9_-]{22}"),
            any::<u64>(),
            proptest::collection::vec(repo, 0..MAX_SCOPES),
            any::<bool>(),
        )
            .prop_map(|(sub, stamp, exp, repositories, admin)| Grant {
                sub,
                stamp,
                exp,
                repositories,
                admin,
            })
    }

    proptest! {
        #![proptest_config(prop_config(256))]

        /// Issue then verify gives back the grant; one character changed anywhere makes it
        /// invalid; past its expiry it is expired.
        #[test]
        fn issue_verify_tamper(g in grant(), now in any::<u64>(), at in any::<prop::sample::Index>(), c in "[A-Za-z0-9_.-]") {
            let key = TokenKey::generate();
            let now = now.min(g.exp);
            let t = key.issue(&g, now);
            prop_assert_eq!(key.verify(&t, now), Ok(g.clone()));
            let i = at.index(t.len());
            let c = c.chars().next().unwrap();
            if t.as_bytes()[i] != c as u8 {
                let mut bad = t.clone().into_bytes();
                bad[i] = c as u8;
                prop_assert_eq!(key.verify(&String::from_utf8(bad).unwrap(), now), Err(TokenError::Invalid));
            }
            if let Some(later) = g.exp.checked_add(1) {
                prop_assert_eq!(key.verify(&t, later), Err(TokenError::Expired));
            }
        }

        /// Anything else offered as a token is refused without a panic.
        #[test]
        fn junk_is_invalid(t in "\\PC{0,200}|[A-Za-z0-9_-]{0,300}\\.[A-Za-z0-9_-]{0,60}", now in any::<u64>()) {
            prop_assert_eq!(TokenKey::generate().verify(&t, now), Err(TokenError::Invalid));
        }

        /// Scopes as `scope` writes them parse back; anything else parses to a valid name
        /// with distinct actions, or to nothing.
        #[test]
        fn scopes_round_trip(
            name in "[a-z0-9]{1,8}([._-][a-z0-9]{1,8}){0,2}(/[a-z0-9]{1,8}){0,2}",
            acts in proptest::sample::subsequence(Action::ALL.to_vec(), 0..=3),
            junk in "(repository:)?[a-zA-Z0-9/:,*._-]{0,40}|\\PC{0,40}",
        ) {
            prop_assert_eq!(parse_scope(&scope(&name, &acts)), Some((name, acts)));
            if let Some((n, a)) = parse_scope(&junk) {
                prop_assert!(crate::registry::names::valid_name(&n));
                prop_assert!(a.iter().enumerate().all(|(i, x)| !a[..i].contains(x)));
            }
        }
    }
}
