//! Who is asking, and may they: credentials and tokens in, challenges and denials out.
//!
//! With auth on, a request is signed in by Basic credentials (verified once, then cached),
//! by a bearer token from `/token`, or not at all (anonymous); the access rules then decide
//! per route. The admin socket is the operator on the registry's own host.

use super::errors::{ApiError, Code};
use super::routes::{Query, Route};
use super::{header, read_small_body, Reply, Result};
use crate::auth::limiter::Limiter;
use crate::auth::passwords::{self, Htpasswd};
use crate::auth::tokens::{self, Grant, TokenError, TokenKey};
use crate::auth::Action;
use crate::config::AuthConfig;
use crate::storage::Store;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tiny_http::{Method, Request};

/// Where a request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The TCP listener (HTTP or HTTPS).
    Network,
    /// The admin socket in the data directory: only the registry's own user (and root) can
    /// open it, so what arrives there is the operator.
    AdminSocket,
    /// `metrics.listen`: `/metrics`, `/healthz` and `/readyz` for anyone, nothing else.
    MetricsListener,
}

/// Who a request comes from.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Auth is off: anyone may do anything.
    Open,
    /// The operator, through the admin socket.
    Operator,
    /// No credentials.
    Anonymous,
    /// A user whose Basic credentials were verified.
    User(String),
    /// A bearer token from `/token`.
    Token(Grant),
}

/// What a route needs of its caller.
enum Need<'r> {
    /// Nothing (the token endpoint authenticates for itself).
    Nothing,
    /// Any credentials, even an anonymous token: `GET /v2/`, as `docker login` checks.
    SignedIn,
    /// An action in a repository.
    Repo(&'r str, Action),
    /// The catalog, filtered to what the caller may pull.
    Catalog,
    /// The admin API.
    Admin,
    /// `/metrics`: admins, and the users of `metrics.users`.
    Metrics,
}

/// How long verified Basic credentials are trusted without hashing the password again.
const VERIFIED_TTL: Duration = Duration::from_secs(300);
/// Entries kept in the verified-credentials cache.
const TABLE_CAP: usize = 4096;

/// The access gate of a registry with auth on.
pub struct Gate {
    config: AuthConfig,
    tls: bool,
    tokens: TokenKey,
    htpasswd: Option<Mutex<Htpasswd>>,
    /// sha256(salt, user, password) -> (user, verified at). Never the password itself.
    verified: Mutex<HashMap<[u8; 32], (String, Instant)>>,
    salt: [u8; 32],
    /// Failed logins per client network and user.
    limiter: Limiter,
    /// `metrics.users`: who may read `/metrics` besides admins.
    metrics_users: Vec<String>,
}

impl Gate {
    /// The gate for `config` (and `metrics_users`, who may read `/metrics`); reads the
    /// htpasswd file (an error says what is wrong with it).
    pub fn new(
        config: AuthConfig,
        tls: bool,
        metrics_users: Vec<String>,
    ) -> std::result::Result<Gate, String> {
        let htpasswd = match &config.htpasswd {
            Some(p) => Some(Mutex::new(Htpasswd::load(p)?)),
            None => None,
        };
        Ok(Gate {
            config,
            tls,
            tokens: TokenKey::generate(),
            htpasswd,
            verified: Mutex::new(HashMap::new()),
            salt: crate::crypto::random(),
            limiter: Limiter::default(),
            metrics_users,
        })
    }

    /// Users of the htpasswd file, if one is configured.
    pub fn htpasswd_users(&self) -> Option<Vec<String>> {
        self.htpasswd.as_ref().map(|h| lock(h).users())
    }

    /// Forgets every verified password: a user was changed or removed.
    pub fn users_changed(&self) {
        lock(&self.verified).clear();
    }

    /// Who sent `req`: 401 for credentials that do not verify, 429 for an address that
    /// failed too often.
    fn identify(&self, store: &Store, req: &Request, need: &Need<'_>) -> Result<Caller> {
        let Some(value) = header(req, "Authorization") else {
            return Ok(Caller::Anonymous);
        };
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, password) = basic(rest)
                .ok_or_else(|| self.challenge(req, need, None, "malformed Basic credentials"))?;
            return match self.check_password(store, &user, &password, client(req)) {
                Ok(()) => Ok(Caller::User(user)),
                Err(Refused::Wrong) => {
                    Err(self.challenge(req, need, None, "wrong user name or password"))
                }
                Err(Refused::Limited(wait)) => Err(limited(wait)),
            };
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            let why = match self.tokens.verify(rest.trim(), crate::clock::unix_now()) {
                Ok(grant) if self.stamp_holds(store, &grant) => return Ok(Caller::Token(grant)),
                Ok(_) => "the token's user was removed or changed password: sign in again",
                Err(TokenError::Expired) => "the token has expired: fetch a new one",
                Err(TokenError::Invalid) => "the token is not valid here",
            };
            return Err(self.challenge(req, need, Some("invalid_token"), why));
        }
        Err(self.challenge(
            req,
            need,
            None,
            "unsupported authorization scheme: use Basic or Bearer",
        ))
    }

    /// True if `grant`'s user still exists with the credentials it had when the token was
    /// issued (anonymous tokens have no user to lose).
    fn stamp_holds(&self, store: &Store, grant: &Grant) -> bool {
        let Some(user) = &grant.sub else {
            return true;
        };
        let (Some(hash), Some(stamp)) = (self.user_hash(store, user), &grant.stamp) else {
            return false;
        };
        let current = self.tokens.stamp(user, &hash);
        crate::crypto::same_bytes(current.as_bytes(), stamp.as_bytes())
    }

    /// `user`'s password hash: from the store, else from the htpasswd file.
    fn user_hash(&self, store: &Store, user: &str) -> Option<String> {
        match store.user_hash(user) {
            Ok(Some(h)) => Some(h),
            Ok(None) => self.htpasswd.as_ref().and_then(|h| lock(h).lookup(user)),
            Err(e) => {
                log::warn!("reading user {user:?}: {e}");
                None
            }
        }
    }

    /// Verifies `user`'s `password`. An address over its failed-login limit is refused before
    /// anything about the password is looked at; otherwise from the cache if verified lately,
    /// else against the store's hash or the htpasswd file's, a failure counted per client
    /// address and user and per client network.
    fn check_password(
        &self,
        store: &Store,
        user: &str,
        password: &str,
        from: Option<IpAddr>,
    ) -> std::result::Result<(), Refused> {
        let checked = self.verify_password(store, user, password, from);
        if let Err(e) = &checked {
            // For the audit trail (never the password), tallied and written in batches.
            store.login_failed(from, user, matches!(e, Refused::Limited(_)));
        }
        checked
    }

    /// `check_password` without the audit trail's tally.
    fn verify_password(
        &self,
        store: &Store,
        user: &str,
        password: &str,
        from: Option<IpAddr>,
    ) -> std::result::Result<(), Refused> {
        use sha2::Digest as _;
        if let Some(wait) = from.and_then(|ip| self.limiter.wait(ip, user)) {
            crate::metrics::get().rate_limited();
            return Err(Refused::Limited(wait));
        }
        let mut h = sha2::Sha256::new();
        h.update(self.salt);
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        let key: [u8; 32] = h.finalize().into();
        {
            let mut cache = lock(&self.verified);
            match cache.get(&key) {
                Some((_, at)) if at.elapsed() < VERIFIED_TTL && !self.htpasswd_changed() => {
                    return Ok(())
                }
                Some(_) => {
                    cache.remove(&key);
                }
                None => {}
            }
        }
        // Counted as a failure from before the check until it succeeds: checks running at
        // once cannot together go past the limit.
        if let Some(Err(wait)) = from.map(|ip| self.limiter.attempt(ip, user)) {
            crate::metrics::get().rate_limited();
            return Err(Refused::Limited(wait));
        }
        let stored = self.user_hash(store, user);
        if !passwords::check(stored.as_deref(), password) {
            log::warn!(
                "failed login for user {user:?} from {}",
                from.map_or("the admin socket".to_owned(), |ip| ip.to_string())
            );
            crate::metrics::get().login_failed();
            return Err(Refused::Wrong);
        }
        if let Some(ip) = from {
            self.limiter.succeeded(ip, user);
        }
        let mut cache = lock(&self.verified);
        if cache.len() >= TABLE_CAP {
            cache.retain(|_, (_, at)| at.elapsed() < VERIFIED_TTL);
            if cache.len() >= TABLE_CAP {
                cache.clear();
            }
        }
        cache.insert(key, (user.to_owned(), Instant::now()));
        Ok(())
    }

    /// True if the htpasswd file changed since it was read (its users are re-read at the
    /// next password check; cached verifications of the old file no longer count).
    fn htpasswd_changed(&self) -> bool {
        self.htpasswd.as_ref().is_some_and(|h| lock(h).changed())
    }

    /// True if `caller` may do `action` in `repo`. Tokens carry their scopes; everyone else
    /// is judged by the rules.
    pub fn may(&self, caller: &Caller, repo: &str, action: Action) -> bool {
        match caller {
            Caller::Open | Caller::Operator => true,
            Caller::Anonymous => self.config.access.allows(None, repo, action),
            Caller::User(u) => self.config.access.allows(Some(u), repo, action),
            Caller::Token(g) => g.covers(repo, action),
        }
    }

    /// True if `caller` may see `repo` in the catalog (may pull it, by the rules).
    fn may_list(&self, caller: &Caller, repo: &str) -> bool {
        match caller {
            Caller::Token(g) => self
                .config
                .access
                .allows(g.sub.as_deref(), repo, Action::Pull),
            c => self.may(c, repo, Action::Pull),
        }
    }

    /// Ok if `caller` may make a request that needs `need`; else 401 with a challenge (no or
    /// too narrow credentials: sign in, or fetch a token with this scope) or 403 `DENIED`.
    fn authorize(&self, req: &Request, caller: &Caller, need: &Need<'_>) -> Result<()> {
        let sub = match caller {
            Caller::Open | Caller::Operator => return Ok(()),
            Caller::Anonymous => None,
            Caller::User(u) => Some(u.as_str()),
            Caller::Token(g) => g.sub.as_deref(),
        };
        let signed_in = !matches!(caller, Caller::Anonymous);
        match need {
            Need::Nothing => Ok(()),
            Need::SignedIn | Need::Catalog if signed_in => Ok(()),
            Need::SignedIn | Need::Catalog => {
                Err(self.challenge(req, need, None, "authentication required"))
            }
            Need::Metrics if sub.is_some_and(|u| self.metrics_users.iter().any(|m| m == u)) => {
                Ok(())
            }
            Need::Metrics if sub.is_some() && !self.config.access.is_admin(sub) => Err(denied(
                "/metrics is for admins and the users named in metrics.users",
            )),
            Need::Metrics => self.authorize(req, caller, &Need::Admin),
            // A token opens the admin API only if it was asked for it (by an admin).
            Need::Admin if self.config.access.is_admin(sub) => match caller {
                Caller::Token(g) if !g.admin => Err(self.challenge(
                    req,
                    need,
                    Some("insufficient_scope"),
                    "the token does not cover the admin API",
                )),
                _ => Ok(()),
            },
            Need::Admin if sub.is_some() => Err(denied("the admin API is for admins")),
            Need::Admin => Err(self.challenge(req, need, None, "authentication required")),
            Need::Repo(repo, action) if self.may(caller, repo, *action) => Ok(()),
            Need::Repo(repo, action) => {
                let rules_allow = self.config.access.allows(sub, repo, *action);
                match caller {
                    // The token is too narrow, but the rules would grant it: fetch another.
                    Caller::Token(_) if rules_allow => Err(self.challenge(
                        req,
                        need,
                        Some("insufficient_scope"),
                        "the token does not cover this request",
                    )),
                    _ if sub.is_none() => {
                        Err(self.challenge(req, need, None, "authentication required"))
                    }
                    _ => Err(denied(&format!(
                        "{} may not {} {repo}",
                        sub.unwrap_or_default(),
                        action.word()
                    ))),
                }
            }
        }
    }

    /// 401 `UNAUTHORIZED` with Docker's challenge: where to get a token, and for which scope.
    fn challenge(
        &self,
        req: &Request,
        need: &Need<'_>,
        error: Option<&str>,
        why: &str,
    ) -> ApiError {
        let mut value = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            self.realm(req),
            self.config.service
        );
        let scope = match need {
            Need::Repo(repo, action) => Some(tokens::scope(repo, &scope_actions(*action))),
            Need::Catalog => Some("registry:catalog:*".to_owned()),
            Need::Admin => Some(tokens::ADMIN_SCOPE.to_owned()),
            _ => None,
        };
        if let Some(s) = scope {
            value.push_str(&format!(",scope=\"{s}\""));
        }
        if let Some(e) = error {
            value.push_str(&format!(",error=\"{e}\""));
        }
        ApiError::new(401, Code::Unauthorized, why).header("WWW-Authenticate", value)
    }

    /// The token endpoint's URL: `auth.realm`, else this server as the client reached it.
    fn realm(&self, req: &Request) -> String {
        if let Some(r) = &self.config.realm {
            return r.clone();
        }
        let scheme = if self.tls { "https" } else { "http" };
        // The Host header is the client's own word for us; anything odd is not echoed.
        let host = header(req, "Host").filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
        match host {
            Some(h) => format!("{scheme}://{h}/token"),
            None => format!("{scheme}://localhost/token"),
        }
    }

    /// `GET /token` (Docker's token flow) and `POST /token` (OAuth2 password grant, as
    /// containerd tries first): a signed token with the asked scopes the caller is granted.
    /// `signed_in` is set to the user whose credentials verified, for the access log.
    fn token(
        &self,
        store: &Store,
        req: &mut Request,
        query: &Query,
        signed_in: &mut String,
    ) -> Result<Reply> {
        let post = *req.method() == Method::Post;
        let (user, scopes): (Option<String>, Vec<String>) = if post {
            let body = read_small_body(req, 16 << 10, ("token request", Code::Unsupported), None)?;
            let form = Query::parse(&format!("?{}", String::from_utf8_lossy(&body)))?;
            match form.get("grant_type") {
                Some("password") => {}
                _ => {
                    return Ok(Reply::bytes(
                        400,
                        "application/json",
                        br#"{"error":"unsupported_grant_type"}"#.to_vec(),
                    ))
                }
            }
            let (Some(user), Some(password)) = (form.get("username"), form.get("password")) else {
                return Err(ApiError::new(
                    401,
                    Code::Unauthorized,
                    "username and password required",
                ));
            };
            match self.check_password(store, user, password, client(req)) {
                Ok(()) => {}
                Err(Refused::Wrong) => {
                    return Err(ApiError::new(
                        401,
                        Code::Unauthorized,
                        "wrong user name or password",
                    ))
                }
                Err(Refused::Limited(wait)) => return Err(limited(wait)),
            }
            (Some(user.to_owned()), scopes(form.all("scope")))
        } else {
            let user = match self.identify(store, req, &Need::Nothing)? {
                Caller::User(u) => Some(u),
                Caller::Anonymous => None,
                _ => {
                    return Err(ApiError::new(
                        401,
                        Code::Unauthorized,
                        "sign in to /token with Basic credentials",
                    ))
                }
            };
            (user, scopes(query.all("scope")))
        };
        if let Some(u) = &user {
            u.clone_into(signed_in);
        }
        if scopes.len() > tokens::MAX_SCOPES {
            return Err(ApiError::new(
                400,
                Code::Unsupported,
                format!("at most {} scopes per token", tokens::MAX_SCOPES),
            ));
        }
        let now = crate::clock::unix_now();
        let ttl = self.config.token_ttl.as_secs();
        let stamp = user
            .as_deref()
            .and_then(|u| Some(self.tokens.stamp(u, &self.user_hash(store, u)?)));
        let mut grant = Grant {
            admin: scopes.iter().any(|s| s == tokens::ADMIN_SCOPE)
                && self.config.access.is_admin(user.as_deref()),
            sub: user,
            stamp,
            exp: now + ttl,
            repositories: Vec::new(),
        };
        for (repo, wanted) in scopes.iter().filter_map(|s| tokens::parse_scope(s)) {
            let actions = self
                .config
                .access
                .granted(grant.sub.as_deref(), &repo, &wanted);
            if !actions.is_empty() {
                grant.repositories.push((repo, actions));
            }
        }
        let token = self.tokens.issue(&grant, now);
        let body = serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": ttl,
            "issued_at": crate::clock::rfc3339(now),
            "scope": grant.scope_text(),
        });
        Ok(
            Reply::bytes(200, "application/json", body.to_string().into_bytes())
                .header("Cache-Control", "no-store"),
        )
    }
}

/// Why a password check failed.
enum Refused {
    Wrong,
    Limited(Duration),
}

/// Identifies and authorises `req` for `route`: who is asking, or the error to answer.
/// Routes that need nothing (the token endpoint) authenticate for themselves.
pub fn check(
    gate: Option<&Gate>,
    store: &Store,
    req: &Request,
    route: &Route,
    origin: Origin,
) -> Result<Caller> {
    let gate = match (origin, gate) {
        (Origin::AdminSocket, _) => return Ok(Caller::Operator),
        (_, None) => return Ok(Caller::Open),
        (_, Some(g)) => g,
    };
    let need = need(route, req.method());
    if let Need::Nothing = need {
        return Ok(Caller::Anonymous);
    }
    let caller = gate.identify(store, req, &need)?;
    gate.authorize(req, &caller, &need)?;
    Ok(caller)
}

/// `GET`/`POST /token`: 404 when auth is off (no challenge ever points here then).
pub fn token(
    gate: Option<&Gate>,
    store: &Store,
    req: &mut Request,
    query: &Query,
    signed_in: &mut String,
) -> Result<Reply> {
    match gate {
        Some(g) => g.token(store, req, query, signed_in),
        None => Err(ApiError::new(
            404,
            Code::Unsupported,
            "auth is off: this registry issues no tokens",
        )),
    }
}

impl Caller {
    /// The name the access log and audit trail give the caller: the user, `anonymous`
    /// (no credentials, or auth off), or `operator` (the admin socket).
    pub fn name(&self) -> &str {
        match self {
            Caller::Open | Caller::Anonymous => "anonymous",
            Caller::Operator => "operator",
            Caller::User(u) => u,
            Caller::Token(g) => g.sub.as_deref().unwrap_or("anonymous"),
        }
    }

    /// True if the caller may pull `repo` (for mounts: pull on `from`). Without a gate the
    /// caller is open or the operator: yes.
    pub fn may_pull(&self, gate: Option<&Gate>, repo: &str) -> bool {
        gate.is_none_or(|g| g.may(self, repo, Action::Pull))
    }

    /// True if the caller may see `repo` in the catalog.
    pub fn may_list(&self, gate: Option<&Gate>, repo: &str) -> bool {
        gate.is_none_or(|g| g.may_list(self, repo))
    }
}

/// Every scope asked for: repeated parameters, each possibly several separated by spaces.
fn scopes<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    values
        .flat_map(|s| s.split(' '))
        .map(str::to_owned)
        .collect()
}

/// What `route` needs: pull to read, push to write, delete to delete.
fn need<'r>(route: &'r Route, method: &Method) -> Need<'r> {
    let repo = |name: &'r String, action| Need::Repo(name.as_str(), action);
    match route {
        Route::Base => Need::SignedIn,
        // Probes reveal nothing but a category of trouble.
        Route::Token | Route::Health(_) => Need::Nothing,
        Route::Metrics => Need::Metrics,
        Route::Catalog => Need::Catalog,
        Route::Tags(n) | Route::Referrers(n, _) => repo(n, Action::Pull),
        Route::Manifest(n, _) | Route::Blob(n, _) => match method {
            Method::Get | Method::Head => repo(n, Action::Pull),
            Method::Delete => repo(n, Action::Delete),
            _ => repo(n, Action::Push),
        },
        Route::Uploads(n) | Route::Upload(n, _) => repo(n, Action::Push),
        Route::AdminSettings
        | Route::AdminStats
        | Route::AdminCheck
        | Route::AdminKeys
        | Route::AdminRepository(_)
        | Route::AdminUsers
        | Route::AdminUser(_)
        | Route::AdminMirrors
        | Route::AdminMirrorRun(_)
        | Route::AdminGc
        | Route::AdminDu
        | Route::AdminScrub
        | Route::AdminAudit
        | Route::AdminPulls => Need::Admin,
    }
}

/// The actions a client asks a token for when it needs `action` (Docker asks `pull,push`
/// to push: it checks which layers exist first).
fn scope_actions(action: Action) -> Vec<Action> {
    match action {
        Action::Push => vec![Action::Pull, Action::Push],
        a => vec![a],
    }
}

/// Decodes `Basic` credentials: base64 of `user:password`.
fn basic(b64: &str) -> Option<(String, String)> {
    let raw = B64.decode(b64.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn client(req: &Request) -> Option<IpAddr> {
    req.remote_addr().map(|a| a.ip())
}

fn denied(why: &str) -> ApiError {
    ApiError::new(
        403,
        Code::Denied,
        format!("requested access to the resource is denied: {why}"),
    )
}

fn limited(wait: Duration) -> ApiError {
    // Rounded up: a client that waits exactly this long gets its attempt.
    let secs = (wait.as_secs_f64().ceil() as u64).max(1);
    ApiError::new(
        429,
        Code::TooManyRequests,
        format!("too many failed logins from this address: retry in {secs} s"),
    )
    .header("Retry-After", secs.to_string())
}

/// Locks `m`, recovering from a panicked holder (the tables stay usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials() {
        assert_eq!(
            basic(&B64.encode("alice:pa:ss")),
            Some(("alice".into(), "pa:ss".into()))
        );
        assert_eq!(basic("!!"), None);
        assert_eq!(basic(&B64.encode("nocolon")), None);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::registry::prop_config;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(prop_config(512))]

        /// `Basic` credentials as clients encode them decode back (a password may hold
        /// colons, a user name cannot); anything else is refused without a panic.
        #[test]
        fn basic_round_trip(user in "[^:]{0,20}", password in "\\PC{0,40}", junk in "\\PC{0,100}") {
            let _ = basic(&junk);
            let encoded = B64.encode(format!("{user}:{password}"));
            prop_assert_eq!(basic(&format!(" {encoded} ")), Some((user, password)));
        }
    }
}
