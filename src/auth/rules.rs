//! Access rules: per repository pattern, who may pull, push and delete; admins may do all.

use crate::config::glob;

/// What a request does to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Read manifests, blobs, tags, referrers.
    Pull,
    /// Upload blobs, put manifests.
    Push,
    /// Delete manifests and blobs.
    Delete,
}

impl Action {
    /// Every action, in scope order.
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    /// The word used in rules and token scopes.
    pub fn word(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    /// Parses a scope or rule word; `*` is not an action (it is expanded by the caller).
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.word() == s)
    }
}

/// Who a rule grants an action to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Everyone, with or without credentials.
    Anonymous,
    /// Anyone who signed in with a valid user and password.
    Authenticated,
    /// One user.
    User(String),
}

impl Principal {
    /// Words with a meaning in rules, so never user names.
    pub const RESERVED: [&'static str; 2] = ["anonymous", "authenticated"];

    /// Parses a rule's entry.
    pub fn parse(s: &str) -> Result<Principal, String> {
        match s {
            "anonymous" => Ok(Principal::Anonymous),
            "authenticated" => Ok(Principal::Authenticated),
            u if super::valid_user_name(u) => Ok(Principal::User(u.to_owned())),
            u => Err(format!(
                "{u:?} is neither anonymous, authenticated nor a user name (1-64 of a-z A-Z \
                 0-9 . _ @ -)"
            )),
        }
    }

    /// True if this principal covers `user` (`None`: no credentials).
    fn covers(&self, user: Option<&str>) -> bool {
        match self {
            Principal::Anonymous => true,
            Principal::Authenticated => user.is_some(),
            Principal::User(u) => user == Some(u.as_str()),
        }
    }
}

/// One `access` rule: repositories matching `repositories` grant each action to its principals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRule {
    /// A name pattern; `*` matches any run of characters, `/` included.
    pub repositories: String,
    /// Who may pull.
    pub pull: Vec<Principal>,
    /// Who may push.
    pub push: Vec<Principal>,
    /// Who may delete.
    pub delete: Vec<Principal>,
}

impl AccessRule {
    fn grants(&self, action: Action) -> &[Principal] {
        match action {
            Action::Pull => &self.pull,
            Action::Push => &self.push,
            Action::Delete => &self.delete,
        }
    }
}

/// The rules and admins of a registry with auth on.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// First matching rule decides; a repository no rule matches is closed to all but admins.
    pub rules: Vec<AccessRule>,
    /// Users who may use the admin API, and do anything in any repository.
    pub admins: Vec<String>,
}

impl Access {
    /// True if `user` (`None`: no credentials) may do `action` in repository `repo`.
    pub fn allows(&self, user: Option<&str>, repo: &str, action: Action) -> bool {
        if self.is_admin(user) {
            return true;
        }
        self.rules
            .iter()
            .find(|r| glob(r.repositories.as_bytes(), repo.as_bytes()))
            .is_some_and(|r| r.grants(action).iter().any(|p| p.covers(user)))
    }

    /// The actions among `wanted` that `user` may do in `repo`.
    pub fn granted(&self, user: Option<&str>, repo: &str, wanted: &[Action]) -> Vec<Action> {
        wanted
            .iter()
            .copied()
            .filter(|a| self.allows(user, repo, *a))
            .collect()
    }

    /// True if `user` is an admin.
    pub fn is_admin(&self, user: Option<&str>) -> bool {
        user.is_some_and(|u| self.admins.iter().any(|a| a == u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_decides() {
        let user = |u: &str| Principal::User(u.into());
        let access = Access {
            rules: vec![
                AccessRule {
                    repositories: "team/secret".into(),
                    pull: vec![user("alice")],
                    push: vec![user("alice")],
                    delete: vec![],
                },
                AccessRule {
                    repositories: "team/*".into(),
                    pull: vec![Principal::Authenticated],
                    push: vec![user("alice"), user("ci")],
                    delete: vec![user("alice")],
                },
                AccessRule {
                    repositories: "public/*".into(),
                    pull: vec![Principal::Anonymous],
                    push: vec![user("ci")],
                    delete: vec![],
                },
            ],
            admins: vec!["root".into()],
        };
        use Action::*;
        assert!(access.allows(Some("bob"), "team/app", Pull));
        assert!(!access.allows(None, "team/app", Pull));
        assert!(!access.allows(Some("bob"), "team/secret", Pull));
        assert!(!access.allows(Some("ci"), "team/secret", Push));
        assert!(access.allows(Some("ci"), "team/app", Push));
        assert!(!access.allows(Some("ci"), "team/app", Delete));
        assert!(access.allows(None, "public/base", Pull));
        assert!(access.allows(Some("bob"), "public/base", Pull));
        assert!(!access.allows(Some("alice"), "elsewhere", Pull));
        assert!(access.allows(Some("root"), "elsewhere", Delete));
        assert_eq!(
            access.granted(Some("ci"), "public/x", &Action::ALL),
            vec![Pull, Push]
        );
        assert!(Principal::parse("anonymous").is_ok() && Principal::parse("a b").is_err());
    }
}
