//! The systemd watchdog (`WatchdogSec=`): `WATCHDOG=1` is sent only while the registry can
//! serve, so that a wedged one is killed and restarted rather than left holding its port.

use super::listener::Heartbeat;
use super::pool::Pool;
use super::Throttled;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// An accept loop that has not gone round for this long is stuck (it wakes every half second).
pub const STUCK_LISTENER: Duration = Duration::from_secs(5);

/// What the watchdog looks at.
pub struct Checks<'a> {
    /// The registry port's accept loop.
    pub heartbeat: &'a Heartbeat,
    /// Its connection threads.
    pub pool: &'a Pool,
    /// A full pool without an idle connection that neither answers a request, nor ends a
    /// connection, nor moves a byte for this long is wedged (a transfer is cut when it stalls
    /// for `ioTimeout`).
    pub stall: Duration,
    /// The store answers a read.
    pub store: &'a (dyn Fn() -> Result<(), String> + Sync),
}

/// Sends `WATCHDOG=1` every half `interval` (every 5 s at most) while `checks` pass, until
/// `stop` is dropped.
pub fn run(interval: Duration, checks: &Checks<'_>, stop: &mpsc::Receiver<()>) {
    static UNWELL: Throttled = Throttled::new(Duration::from_secs(10));
    let every = (interval / 2).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut seen = (progress(checks), Instant::now());
    loop {
        match health(checks, &mut seen) {
            Ok(()) => crate::systemd::notify("WATCHDOG=1"),
            Err(why) => UNWELL.warn(|| {
                format!("watchdog: {why}; not telling systemd the registry is well (it restarts it after WatchdogSec)")
            }),
        }
        if let Err(mpsc::RecvTimeoutError::Disconnected) = stop.recv_timeout(every) {
            return;
        }
    }
}

/// Requests answered, connections ended and bytes moved so far: it changes while anything
/// gets done.
fn progress(checks: &Checks<'_>) -> u64 {
    checks.pool.load().progress + tiny_http::bytes_moved()
}

/// Why the registry cannot serve, if it cannot. `seen`: the pool's progress counter and when
/// it last moved.
fn health(checks: &Checks<'_>, seen: &mut (u64, Instant)) -> Result<(), String> {
    let age = checks.heartbeat.age();
    if age > STUCK_LISTENER {
        return Err(format!("the accept loop has not run for {age:?}"));
    }
    let load = checks.pool.load();
    let now = progress(checks);
    if now != seen.0 || load.busy < load.max || load.idle > 0 {
        *seen = (now, Instant::now());
    } else if seen.1.elapsed() > checks.stall {
        return Err(format!(
            "all {} connections are taken and none has answered, ended or moved a byte for {:?}",
            load.busy,
            seen.1.elapsed()
        ));
    }
    (checks.store)().map_err(|e| format!("the store does not answer: {e}"))
}
