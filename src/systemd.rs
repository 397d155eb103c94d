//! systemd integration without libsystemd: readiness and stop notifications on
//! `$NOTIFY_SOCKET` (`Type=notify`), the watchdog interval (`WatchdogSec=`), socket
//! activation from `$LISTEN_FDS` (`outpost.socket`), and journal priorities when stderr is the
//! journal.

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`) to the service manager if `$NOTIFY_SOCKET` names one; a
/// failure is logged and otherwise ignored (the registry serves either way).
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        log::warn!("cannot notify the service manager at {path:?}: {e}");
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    match bytes.strip_prefix(b"@") {
        // '@' names a socket in the abstract namespace.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(state.as_bytes(), path)?;
        }
    }
    Ok(())
}

/// How often systemd wants to hear `WATCHDOG=1` (`WatchdogSec=` sets `$WATCHDOG_USEC`), if it
/// watches this process (`$WATCHDOG_PID`, when set, names it).
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| std::time::Duration::from_micros(usec))
}

/// The listening TCP socket systemd passed (`LISTEN_FDS=1` for this process), if any.
/// Clears the variables so that nothing started later takes them for its own.
pub fn activated_listener() -> Result<Option<TcpListener>, String> {
    use std::os::fd::FromRawFd;
    const FIRST_FD: libc::c_int = 3; // SD_LISTEN_FDS_START
    let (Some(pid), Some(fds)) = (
        std::env::var_os("LISTEN_PID"),
        std::env::var_os("LISTEN_FDS"),
    ) else {
        return Ok(None);
    };
    // Single-threaded here (called before any thread starts): removing variables is sound.
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        return Ok(None); // meant for another process
    }
    match fds.to_str().and_then(|n| n.parse::<u32>().ok()) {
        Some(1) => {}
        Some(0) => return Ok(None),
        _ => {
            return Err(format!(
                "socket activation passed LISTEN_FDS={fds:?}: outpost takes exactly one \
                 socket (one ListenStream= in outpost.socket)"
            ))
        }
    }
    // SAFETY: fcntl/getsockopt/getsockname only read the descriptor's state.
    let (family, listening) = unsafe {
        libc::fcntl(FIRST_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let named = libc::getsockname(FIRST_FD, (&raw mut storage).cast(), &mut len) == 0;
        let mut accepting: libc::c_int = 0;
        let mut optlen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let got = libc::getsockopt(
            FIRST_FD,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&raw mut accepting).cast(),
            &mut optlen,
        ) == 0;
        (
            if named {
                i32::from(storage.ss_family)
            } else {
                -1
            },
            got && accepting == 1,
        )
    };
    if (family != libc::AF_INET && family != libc::AF_INET6) || !listening {
        return Err(
            "socket activation passed a descriptor that is not a listening TCP \
                    socket: outpost.socket needs ListenStream=[ADDRESS:]PORT"
                .into(),
        );
    }
    // SAFETY: fd 3 is ours (LISTEN_PID is this process) and a listening TCP socket.
    Ok(Some(unsafe { TcpListener::from_raw_fd(FIRST_FD) }))
}

/// True when stderr is connected to the journal (systemd sets `$JOURNAL_STREAM` to its
/// device and inode), so that log lines carry `<N>` priorities instead of timestamps.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    // SAFETY: fstat on fd 2 fills a plain struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    // (compared as text: dev_t and ino_t differ in width between targets)
    dev == st.st_dev.to_string() && ino == st.st_ino.to_string()
}

/// The syslog priority of a log level, as journald reads it from a `<N>` prefix.
pub fn journal_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}
