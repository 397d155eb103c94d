//! Password hashes: PBKDF2-HMAC-SHA256 for users kept in the store, bcrypt for htpasswd files.

use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// PBKDF2 rounds for new hashes (OWASP's 2023 figure for HMAC-SHA256). Each hash records
/// its own count, so raising this later does not lock anyone out.
pub const PBKDF2_ITERATIONS: u32 = 600_000;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
const PREFIX: &str = "$pbkdf2-sha256$";

/// Ok if `password` may be set: 8 to 1024 bytes, no control characters (they do not survive
/// every client's prompt or config file).
pub fn acceptable(password: &str) -> Result<(), String> {
    if password.len() < 8 || password.len() > 1024 {
        return Err("a password must be 8 to 1024 bytes long".into());
    }
    if password.chars().any(char::is_control) {
        return Err("a password must not contain control characters".into());
    }
    Ok(())
}

/// A new PBKDF2 hash of `password` with a random salt: `$pbkdf2-sha256$ROUNDS$SALT$HASH`.
pub fn hash(password: &str) -> String {
    hash_with(password, PBKDF2_ITERATIONS)
}

fn hash_with(password: &str, rounds: u32) -> String {
    let salt: [u8; SALT_LEN] = crate::crypto::random();
    let mut out = [0u8; HASH_LEN];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(rounds).expect("rounds > 0"),
        &salt,
        password.as_bytes(),
        &mut out,
    );
    format!("{PREFIX}{rounds}${}${}", B64.encode(salt), B64.encode(out))
}

/// True if `password` matches `stored` (a PBKDF2 hash of ours, or a bcrypt `$2a$`/`$2b$`/`$2y$`
/// hash); the comparison is constant-time. A malformed hash matches nothing.
pub fn verify(stored: &str, password: &str) -> bool {
    if let Some(rest) = stored.strip_prefix(PREFIX) {
        let mut parts = rest.split('$');
        let (Some(rounds), Some(salt), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let (Ok(rounds), Ok(salt), Ok(hash)) =
            (rounds.parse::<u32>(), B64.decode(salt), B64.decode(hash))
        else {
            return false;
        };
        let Some(rounds) = NonZeroU32::new(rounds).filter(|r| r.get() <= 10_000_000) else {
            return false;
        };
        return ring::pbkdf2::verify(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            rounds,
            &salt,
            password.as_bytes(),
            &hash,
        )
        .is_ok();
    }
    is_bcrypt(stored) && bcrypt::verify(password, stored).unwrap_or(false)
}

/// Spends the time a real verification would (for a user whose name is unknown).
fn verify_nobody(password: &str) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_with("not a password", PBKDF2_ITERATIONS));
    let _ = verify(dummy, password);
}

/// How long a failed password check takes here, nanoseconds (0: not measured yet): raised at
/// once by a slower check, lowered by a 32nd of the difference by a faster one (a spike of
/// load does not slow every later failure for good, and alternating fast and slow users
/// moves it by a few percent only).
static FLOOR_NANOS: AtomicU64 = AtomicU64::new(0);
/// A check that took longer than this (a hash with an extreme cost, a stalled machine) does
/// not make every later failure wait as long.
const FLOOR_CAP: Duration = Duration::from_secs(10);

/// True if `password` matches `stored` (`None`: no such user). A failure takes as long as the
/// slow checks seen lately, whether the user is unknown, kept in the store (PBKDF2) or in an
/// htpasswd file (bcrypt of any cost): neither a user name nor how its password is hashed
/// shows in the time a failed login takes. A success answers at once.
pub fn check(stored: Option<&str>, password: &str) -> bool {
    if FLOOR_NANOS.load(Ordering::Relaxed) == 0 {
        // Calibrated on first use (a start must stay quick): one verification of our own.
        let started = Instant::now();
        verify_nobody(password);
        settle_floor(started.elapsed());
    }
    let started = Instant::now();
    let ok = match stored {
        Some(hash) => verify(hash, password),
        None => {
            verify_nobody(password);
            false
        }
    };
    let took = started.elapsed();
    let floor = settle_floor(took);
    if !ok {
        std::thread::sleep(floor.saturating_sub(started.elapsed()));
    }
    ok
}

/// Moves the floor for a check that took `took` (capped); returns the new floor.
fn settle_floor(took: Duration) -> Duration {
    let took = took.min(FLOOR_CAP).as_nanos() as u64;
    let next = |f: u64| if took >= f { took } else { f - (f - took) / 32 };
    let before = FLOOR_NANOS
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| Some(next(f)))
        .unwrap_or_else(|f| f);
    Duration::from_nanos(next(before))
}

fn is_bcrypt(h: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| h.starts_with(p)) && h.len() == 60
}

/// An htpasswd file (bcrypt entries, as `htpasswd -B` writes and distribution and zot read),
/// re-read when it changes on disk.
pub struct Htpasswd {
    path: PathBuf,
    modified: Option<SystemTime>,
    entries: HashMap<String, String>,
}

impl Htpasswd {
    /// Reads `path`; an unreadable file or a line that is not `user:bcrypt-hash` is an error
    /// naming the line.
    pub fn load(path: &Path) -> Result<Htpasswd, String> {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("auth.htpasswd: cannot read {}: {e}", path.display()))?;
        let entries = parse(&text).map_err(|e| format!("auth.htpasswd {}: {e}", path.display()))?;
        Ok(Htpasswd {
            path: path.to_owned(),
            modified,
            entries,
        })
    }

    /// The hash for `user`, after re-reading the file if it changed. A file that became
    /// unreadable or invalid is logged and its previous contents kept.
    pub fn lookup(&mut self, user: &str) -> Option<String> {
        if self.changed() {
            match Htpasswd::load(&self.path) {
                Ok(fresh) => {
                    log::info!("re-read {}: {} user(s)", self.path.display(), fresh.len());
                    *self = fresh;
                }
                Err(e) => {
                    log::warn!("{e}; keeping the users read before");
                    self.modified = std::fs::metadata(&self.path)
                        .and_then(|m| m.modified())
                        .ok();
                }
            }
        }
        self.entries.get(user).cloned()
    }

    /// True if the file changed on disk since it was read.
    pub fn changed(&self) -> bool {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
            != self.modified
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The user names, sorted.
    pub fn users(&self) -> Vec<String> {
        let mut v: Vec<String> = self.entries.keys().cloned().collect();
        v.sort();
        v
    }
}

fn parse(text: &str) -> Result<HashMap<String, String>, String> {
    let mut entries = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: not user:hash", i + 1))?;
        if !super::valid_user_name(user) {
            return Err(format!(
                "line {}: {user:?} is not a user name (1-64 of a-z A-Z 0-9 . _ @ -, not \
                 anonymous or authenticated)",
                i + 1
            ));
        }
        if !is_bcrypt(hash) {
            return Err(format!(
                "line {}: user {user:?} has a hash that is not bcrypt (write it with htpasswd -B)",
                i + 1
            ));
        }
        entries.insert(user.to_owned(), hash.to_owned());
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_round_trip() {
        let h = hash_with("s3cret", 1000);
        assert!(h.starts_with("$pbkdf2-sha256$1000$"));
        assert!(verify(&h, "s3cret"));
        assert!(!verify(&h, "s3cret "));
        assert_ne!(h, hash_with("s3cret", 1000), "salted");
        assert!(!verify("$pbkdf2-sha256$0$AAAA$AAAA", ""));
        assert!(!verify("$pbkdf2-sha256$x", ""));
        assert!(!verify("plain", "plain"));
    }

    #[test]
    fn htpasswd_lines() {
        let b = bcrypt::hash("pw", 4).unwrap();
        let ok = parse(&format!("# users\n\nalice:{b}\n")).unwrap();
        assert!(verify(&ok["alice"], "pw") && !verify(&ok["alice"], "px"));
        assert!(parse("bob:$apr1$abc$def")
            .unwrap_err()
            .contains("htpasswd -B"));
        assert!(parse("bob").unwrap_err().contains("line 1"));
        assert!(parse(&format!("anonymous:{b}")).is_err());
    }
}
