//! The audit trail: who changed what, from where, and when.
//!
//! The store writes a record in the same write transaction as the change it describes
//! (`storage/audit.rs`), so a crash keeps both or neither and no change pays a second commit.
//! Who is asking is not passed down every store call: it is this thread's [`Actor`], set by
//! the HTTP layer once auth has identified the caller (`acting_as`), by the collector (`gc`),
//! and left at `operator` for management commands on a stopped store. Failed logins and pulls
//! change nothing in a transaction: they are tallied in memory ([`Tally`]) and written a
//! batch at a time.

pub mod config;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;

/// Who makes the changes this thread commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// A user name, `anonymous`, `operator` (admin socket, CLI) or `gc`.
    pub user: String,
    /// The client's address; None on the admin socket and for the CLI on a stopped store.
    pub addr: Option<IpAddr>,
}

thread_local! {
    static ACTOR: RefCell<Option<Actor>> = const { RefCell::new(None) };
}

/// Restores the thread's previous actor when dropped.
pub struct ActingAs(Option<Actor>);

impl Drop for ActingAs {
    fn drop(&mut self) {
        let previous = self.0.take();
        ACTOR.with(|a| *a.borrow_mut() = previous);
    }
}

/// Makes `user` at `addr` the actor of this thread's changes until the guard is dropped.
pub fn acting_as(user: &str, addr: Option<IpAddr>) -> ActingAs {
    let actor = Actor {
        user: user.to_owned(),
        addr,
    };
    ActingAs(ACTOR.with(|a| a.borrow_mut().replace(actor)))
}

/// This thread's actor: `operator` without an address unless one was set.
pub fn actor() -> Actor {
    ACTOR.with(|a| a.borrow().clone()).unwrap_or_else(|| Actor {
        user: "operator".to_owned(),
        addr: None,
    })
}

/// A change about to be committed: what, where and the details, without who and when.
#[derive(Debug, Clone)]
pub struct Change {
    /// E.g. `manifest.push`, `tag.move`, `user.add` (README lists them).
    pub action: &'static str,
    /// The repository, if the change is in one.
    pub repo: Option<String>,
    /// Digest, tag, from/to, size, key name...
    pub details: Map<String, Value>,
}

impl Change {
    /// A change `action` in no repository.
    pub fn new(action: &'static str) -> Change {
        Change {
            action,
            repo: None,
            details: Map::new(),
        }
    }

    /// A change `action` in repository `repo`.
    pub fn in_repo(action: &'static str, repo: &str) -> Change {
        Change {
            repo: Some(repo.to_owned()),
            ..Change::new(action)
        }
    }

    /// Adds detail `key`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Change {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}

/// One record of the trail, as stored (JSON) and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Sequence number: strictly increasing, never reused.
    pub seq: u64,
    /// Unix seconds of the commit.
    pub time: u64,
    /// Who (see [`Actor`]).
    pub user: String,
    /// From where, if over the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// What (see [`Change::action`]).
    pub action: String,
    /// In which repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// The rest.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub details: Map<String, Value>,
}

impl Record {
    /// `change` made by `actor`, numbered `seq`, at `time`.
    pub fn new(change: Change, actor: &Actor, seq: u64, time: u64) -> Record {
        Record {
            seq,
            time,
            user: actor.user.clone(),
            addr: actor.addr.map(|a| a.to_string()),
            action: change.action.to_owned(),
            repo: change.repo,
            details: change.details,
        }
    }

    /// The record as the admin API and `outpost audit --json` show it (time in RFC 3339).
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["time"] = crate::clock::rfc3339(self.time).into();
        v
    }

    /// The record as a log line or a line of `outpost audit`.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{} #{} {} {} {}",
            crate::clock::rfc3339(self.time),
            self.seq,
            word(&self.user),
            self.addr.as_deref().unwrap_or("-"),
            self.action
        );
        if let Some(r) = &self.repo {
            s.push(' ');
            s.push_str(&word(r));
        }
        for (k, v) in &self.details {
            match v {
                Value::String(t) => s.push_str(&format!(" {k}={}", word(t))),
                v => s.push_str(&format!(" {k}={v}")),
            }
        }
        s
    }
}

/// `s` as one word of a record's line: as it is if it is plain, else quoted and escaped as a
/// JSON string. A name a client sent (a user tried at login) cannot break the line, fake
/// another, or smuggle terminal escapes.
fn word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '='));
    if plain {
        s.to_owned()
    } else {
        Value::String(s.to_owned()).to_string()
    }
}

/// Which records a reader wants: at most `limit` of the newest that match, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Committed at or after these unix seconds.
    pub since: Option<u64>,
    /// In this repository.
    pub repo: Option<String>,
    /// By this user.
    pub user: Option<String>,
    /// At most this many (the newest).
    pub limit: usize,
}

impl Filter {
    /// True if `r` matches.
    pub fn matches(&self, r: &Record) -> bool {
        self.since.is_none_or(|s| r.time >= s)
            && self
                .repo
                .as_ref()
                .is_none_or(|x| r.repo.as_ref() == Some(x))
            && self.user.as_ref().is_none_or(|u| &r.user == u)
    }
}

/// Records a reader gets when it names no limit.
pub const DEFAULT_LIMIT: usize = 1000;

/// Parses `--since`: RFC 3339 (`2026-12-02T04:00:00Z`, an offset, fractions ignored) or a
/// duration ago (`90s`, `30m`, `1h`, `7d`); returns unix seconds.
pub fn parse_since(s: &str, now: u64) -> Result<u64, String> {
    if let Ok(d) = crate::config::parse_duration(s) {
        return Ok(now.saturating_sub(d.as_secs()));
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!("{s:?} is neither a time (2026-12-02T04:00:00Z) nor a duration ago (1h, 7d)")
    })
}

/// Unix seconds of an RFC 3339 time at or after 1970.
fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[13] != b':' || b[16] != b':' || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && o.is_ascii() && matches!(&o[..1], "+" | "-") && &o[3..4] == ":" => {
            let m = o[1..3].parse::<i64>().ok()? * 60 + o[4..6].parse::<i64>().ok()?;
            if o.starts_with('-') {
                -m * 60
            } else {
                m * 60
            }
        }
        _ => return None,
    };
    // Howard Hinnant's days-from-civil.
    let (y, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86400 + h * 3600 + mi * 60 + sec - offset).ok()
}

/// Distinct (address, kind) entries of failed logins kept between writes; more are counted
/// under no address.
const LOGIN_KEYS: usize = 256;
/// Distinct (repository, reference) pull counters kept between writes; past it they are
/// written early.
pub const PULL_KEYS: usize = 10_000;
/// User names kept per failed-login entry (the count covers the rest).
const LOGIN_USERS: usize = 3;

/// Failed logins and pulls since the last write: bounded memory, one batch per write.
#[derive(Debug, Default)]
pub struct Tally {
    /// (address, rate-limited) -> (failures, first user names).
    logins: HashMap<(Option<IpAddr>, bool), (u64, Vec<String>)>,
    /// Repository -> tag or digest -> (pulls, unix seconds of the last). Nested, so that
    /// counting a pull of a known reference allocates nothing.
    pulls: HashMap<String, HashMap<String, (u64, u64)>>,
    /// References in `pulls`.
    pull_keys: usize,
}

/// Pulls counted: (repository, reference, (count, unix seconds of the last)).
pub type Pulls = Vec<(String, String, (u64, u64))>;

impl Tally {
    /// Counts a failed login by `user` from `addr` (`limited`: refused by the rate limit
    /// before the password was looked at).
    pub fn login_failed(&mut self, addr: Option<IpAddr>, user: &str, limited: bool) {
        let key = if self.logins.len() < LOGIN_KEYS || self.logins.contains_key(&(addr, limited)) {
            (addr, limited)
        } else {
            (None, limited)
        };
        let (n, users) = self.logins.entry(key).or_default();
        *n += 1;
        // A name is whatever a client sent: kept short.
        let user: String = user.chars().take(64).collect();
        if users.len() < LOGIN_USERS && !users.contains(&user) {
            users.push(user);
        }
    }

    /// Counts a pull of `reference` (a tag or digest) from `repo` at `now`; true when the
    /// tally is full and should be written now.
    pub fn pulled(&mut self, repo: &str, reference: &str, now: u64) -> bool {
        let refs = match self.pulls.get_mut(repo) {
            Some(refs) => refs,
            None => self.pulls.entry(repo.to_owned()).or_default(),
        };
        let e = match refs.get_mut(reference) {
            Some(e) => e,
            None => {
                self.pull_keys += 1;
                refs.entry(reference.to_owned()).or_default()
            }
        };
        e.0 += 1;
        e.1 = now;
        self.pull_keys >= PULL_KEYS
    }

    /// True if pulls wait to be written.
    pub fn has_pulls(&self) -> bool {
        self.pull_keys > 0
    }

    /// The pulls counted, of repository `repo` or all.
    pub fn pulls(&self, repo: Option<&str>) -> Pulls {
        let mut out = Vec::new();
        for (r, refs) in &self.pulls {
            if repo.is_none_or(|x| x == r) {
                for (reference, v) in refs {
                    out.push((r.clone(), reference.clone(), *v));
                }
            }
        }
        out
    }

    /// The pulls counted, forgotten.
    pub fn take_pulls(&mut self) -> Pulls {
        let out = self.pulls(None);
        self.pulls.clear();
        self.pull_keys = 0;
        out
    }

    /// Forgets the pulls counted of `repo` (deleted: a new repository of its name starts at 0).
    pub fn forget_repo(&mut self, repo: &str) {
        if let Some(refs) = self.pulls.remove(repo) {
            self.pull_keys -= refs.len();
        }
    }

    /// True if failed logins wait to be written.
    pub fn has_logins(&self) -> bool {
        !self.logins.is_empty()
    }

    /// The failed logins as records to append (each with its own actor: the address), and
    /// forgets them.
    pub fn take_logins(&mut self) -> Vec<(Change, Actor)> {
        let mut out: Vec<_> = self
            .logins
            .drain()
            .map(|((addr, limited), (n, users))| {
                let action = if limited {
                    "login.limited"
                } else {
                    "login.failed"
                };
                let change = Change::new(action)
                    .with("count", n)
                    .with("users", users.clone());
                // The names tried are what a client claimed, never who acted: a failed
                // login is anonymous's (else "root" tried by anyone reads as root's record).
                let user = "anonymous".to_owned();
                (change, Actor { user, addr })
            })
            .collect();
        out.sort_by_key(|(c, a)| (a.addr, c.action));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_holds_hostile_names_as_one_word() {
        assert_eq!(word("alice"), "alice");
        assert_eq!(word("x\n2026 #9 root"), "\"x\\n2026 #9 root\"");
        assert_eq!(word("a b"), "\"a b\"");
        assert_eq!(word("\u{1b}[31m"), "\"\\u001b[31m\"");
        assert_eq!(word(""), "\"\"");
        // Non-ASCII offsets are refused, not sliced mid-character.
        assert_eq!(parse_rfc3339("2026-12-02T04:00:00\u{e9}0:00"), None);
        assert_eq!(parse_rfc3339("2026-12-02T04:00:00+\u{e9}:00"), None);
    }

    #[test]
    fn since_forms() {
        assert_eq!(parse_since("1h", 10_000).unwrap(), 10_000 - 3600);
        assert_eq!(
            parse_since("2026-11-23T16:19:39Z", 0).unwrap(),
            1_795_450_779
        );
        assert_eq!(
            parse_since("2026-11-23T17:19:39.5+01:00", 0).unwrap(),
            1_795_450_779
        );
        assert_eq!(parse_since("1970-01-01T00:00:00Z", 0).unwrap(), 0);
        assert!(parse_since("yesterday", 0).is_err());
        assert!(parse_since("2026-13-01T00:00:00Z", 0).is_err());
    }

    #[test]
    fn actor_is_per_thread_and_restored() {
        assert_eq!(actor().user, "operator");
        {
            let _a = acting_as("alice", Some([127, 0, 0, 2].into()));
            assert_eq!(actor().user, "alice");
            {
                let _b = acting_as("gc", None);
                assert_eq!(actor().user, "gc");
            }
            assert_eq!(actor().user, "alice");
            std::thread::spawn(|| assert_eq!(actor().user, "operator"))
                .join()
                .unwrap();
        }
        assert_eq!(actor().user, "operator");
    }

    #[test]
    fn pulls_are_counted_and_the_tally_says_when_full() {
        let mut t = Tally::default();
        assert!(!t.pulled("a", "v1", 5));
        assert!(!t.pulled("a", "v1", 9));
        assert!(!t.pulled("b", "v1", 7));
        let mut p = t.pulls(Some("a"));
        assert_eq!(p, vec![("a".into(), "v1".into(), (2, 9))]);
        p = t.take_pulls();
        assert_eq!(p.len(), 2);
        assert!(!t.has_pulls());
        let full = (0..PULL_KEYS).map(|i| t.pulled("c", &i.to_string(), 1));
        assert_eq!(full.filter(|f| *f).count(), 1);
    }

    #[test]
    fn failed_logins_are_bounded() {
        let mut t = Tally::default();
        for i in 0..1000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            t.login_failed(Some(ip), &format!("u{}", i % 7), false);
        }
        let batch = t.take_logins();
        assert_eq!(batch.len(), LOGIN_KEYS + 1);
        let total: u64 = batch
            .iter()
            .map(|(c, _)| c.details["count"].as_u64().unwrap())
            .sum();
        assert_eq!(total, 1000);
        assert!(!t.has_logins());
    }
}
