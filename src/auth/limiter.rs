//! Failed-login limits: per (client address, user) and per client network, where a client
//! network is an IPv4 /24 or an IPv6 /64 (one host rarely has just one address of those).
//!
//! Each key has a leaky bucket of failures: every failed login adds one, one is forgiven per
//! refill interval, and a key over its burst must wait. The table is bounded; when it is full
//! the key with the fewest failures goes first, so a flood of single failures from other
//! addresses cannot push out (and so unblock) a key that is over its limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One bucket's shape: how many failures it holds, and how often one is forgiven.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    /// Failures allowed in a burst.
    pub burst: f64,
    /// How often one more failure is forgiven.
    pub refill: Duration,
}

/// Guesses at one user's password from one address: ten, then one per 6 s.
pub const PER_USER: Bucket = Bucket {
    burst: 10.0,
    refill: Duration::from_secs(6),
};
/// Failures from one network whatever the user (one host spraying many names, or many hosts
/// behind one NAT): thirty, then one per 2 s.
pub const PER_NETWORK: Bucket = Bucket {
    burst: 30.0,
    refill: Duration::from_secs(2),
};
/// Keys the table holds.
const CAPACITY: usize = 8192;

/// What a bucket is kept for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Network([u8; 8]),
    User(IpAddr, String),
}

/// The failed-login table of a registry.
pub struct Limiter {
    table: Mutex<HashMap<Key, (f64, Instant)>>,
    per_user: Bucket,
    per_network: Bucket,
    capacity: usize,
}

impl Default for Limiter {
    fn default() -> Limiter {
        Limiter::new(PER_USER, PER_NETWORK, CAPACITY)
    }
}

impl Limiter {
    /// A limiter with these buckets holding at most `capacity` keys.
    pub fn new(per_user: Bucket, per_network: Bucket, capacity: usize) -> Limiter {
        Limiter {
            table: Mutex::new(HashMap::new()),
            per_user,
            per_network,
            capacity: capacity.max(2),
        }
    }

    /// How long `ip` must wait before it may try `user`'s password (or any password), if it
    /// failed too often. Asked before anything about the password is looked at.
    pub fn wait(&self, ip: IpAddr, user: &str) -> Option<Duration> {
        let table = lock(&self.table);
        self.over(&table, &self.keys(ip, user))
    }

    /// Takes one attempt at `user`'s password from `ip`, counted as a failure until
    /// `succeeded` gives it back: attempts checked at the same moment cannot all pass the
    /// limit before any of them has failed. Refused with the wait if over the limit.
    pub fn attempt(&self, ip: IpAddr, user: &str) -> Result<(), Duration> {
        let keys = self.keys(ip, user);
        let mut table = lock(&self.table);
        if let Some(wait) = self.over(&table, &keys) {
            return Err(wait);
        }
        for (key, b) in keys {
            if !table.contains_key(&key) && table.len() >= self.capacity {
                make_room(&mut table, self.per_user);
            }
            let now = Instant::now();
            let entry = table.entry(key).or_insert((0.0, now));
            *entry = (decayed(entry.0, entry.1, b) + 1.0, now);
        }
        Ok(())
    }

    /// Gives back the attempt of a login that succeeded.
    pub fn succeeded(&self, ip: IpAddr, user: &str) {
        let mut table = lock(&self.table);
        for (key, b) in self.keys(ip, user) {
            if let Some(entry) = table.get_mut(&key) {
                *entry = (
                    (decayed(entry.0, entry.1, b) - 1.0).max(0.0),
                    Instant::now(),
                );
            }
        }
    }

    /// The buckets a login of `user` from `ip` counts in.
    fn keys(&self, ip: IpAddr, user: &str) -> [(Key, Bucket); 2] {
        [
            (Key::Network(network(ip)), self.per_network),
            (Key::User(canonical(ip), user.to_owned()), self.per_user),
        ]
    }

    /// How long to wait if any of `keys` is full.
    fn over(
        &self,
        table: &HashMap<Key, (f64, Instant)>,
        keys: &[(Key, Bucket); 2],
    ) -> Option<Duration> {
        keys.iter()
            .filter_map(|(key, b)| {
                let (level, at) = table.get(key)?;
                let level = decayed(*level, *at, *b);
                (level + 1.0 > b.burst).then(|| b.refill.mul_f64(level + 1.0 - b.burst))
            })
            .max()
            .map(|w| w.max(Duration::from_secs(1)))
    }
}

/// Frees one place at least: every forgiven key, else the key with the fewest failures left.
fn make_room(table: &mut HashMap<Key, (f64, Instant)>, slowest: Bucket) {
    // Measured against the slower refill: a key is gone only once it would be forgiven.
    table.retain(|_, (level, at)| decayed(*level, *at, slowest) > 0.0);
    if let Some(key) = table
        .iter()
        .min_by(|a, b| {
            let la = decayed(a.1 .0, a.1 .1, slowest);
            let lb = decayed(b.1 .0, b.1 .1, slowest);
            la.total_cmp(&lb)
        })
        .map(|(k, _)| k.clone())
    {
        table.remove(&key);
    }
}

/// `ip`, an IPv4 address mapped into IPv6 as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The network `ip` counts in: its /24 (IPv4, also when mapped into IPv6) or its /64.
fn network(ip: IpAddr) -> [u8; 8] {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            [4, o[0], o[1], o[2], 0, 0, 0, 0]
        }
        IpAddr::V6(v6) => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&v6.octets()[..8]);
            n
        }
    }
}

/// `level` failures counted at `at`, less those forgiven since.
fn decayed(level: f64, at: Instant, b: Bucket) -> f64 {
    (level - at.elapsed().as_secs_f64() / b.refill.as_secs_f64()).max(0.0)
}

/// Locks `m`, recovering from a panicked holder (the table stays usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_aggregate_by_24_and_64() {
        assert_eq!(network(ip("10.1.2.3")), network(ip("10.1.2.200")));
        assert_ne!(network(ip("10.1.2.3")), network(ip("10.1.3.3")));
        assert_eq!(network(ip("::ffff:10.1.2.9")), network(ip("10.1.2.3")));
        assert_eq!(network(ip("2001:db8::1")), network(ip("2001:db8::ffff:1")));
        assert_ne!(network(ip("2001:db8::1")), network(ip("2001:db8:0:1::1")));
    }

    #[test]
    fn per_user_then_per_network() {
        let l = Limiter::default();
        for _ in 0..10 {
            assert_eq!(l.wait(ip("10.0.0.1"), "alice"), None);
            l.attempt(ip("10.0.0.1"), "alice").unwrap();
        }
        assert!(l.wait(ip("10.0.0.1"), "alice").is_some());
        assert!(l.wait(ip("::ffff:10.0.0.1"), "alice").is_some(), "mapped");
        assert_eq!(l.wait(ip("10.0.0.2"), "alice"), None, "another address");
        assert_eq!(l.wait(ip("10.0.0.1"), "bob"), None, "another user");
        for i in 0..20 {
            let _ = l.attempt(ip("10.0.0.3"), &format!("u{i}"));
        }
        assert!(
            l.wait(ip("10.0.0.9"), "carol").is_some(),
            "the network is over"
        );
        assert_eq!(l.wait(ip("10.0.1.1"), "carol"), None);
    }

    #[test]
    fn attempts_in_flight_count_and_a_success_gives_its_back() {
        let l = Limiter::default();
        // Ten attempts at once, none finished: the eleventh is refused.
        for _ in 0..10 {
            assert!(l.attempt(ip("10.0.0.1"), "bob").is_ok());
        }
        assert!(l.attempt(ip("10.0.0.1"), "bob").is_err());
        // One of them was the right password: its attempt comes back.
        l.succeeded(ip("10.0.0.1"), "bob");
        assert!(l.attempt(ip("10.0.0.1"), "bob").is_ok());
        assert!(l.attempt(ip("10.0.0.1"), "bob").is_err());
    }

    #[test]
    fn a_flood_from_elsewhere_does_not_unblock_a_key() {
        let l = Limiter::new(PER_USER, PER_NETWORK, 64);
        for _ in 0..12 {
            let _ = l.attempt(ip("192.0.2.1"), "root");
        }
        for i in 0..5000u32 {
            let o = i.to_be_bytes();
            let _ = l.attempt(IpAddr::from([o[1], o[2], o[3], 1]), "x");
        }
        assert!(lock(&l.table).len() <= 64);
        assert!(l.wait(ip("192.0.2.1"), "root").is_some());
    }
}
