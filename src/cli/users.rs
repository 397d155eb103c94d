//! `outpost user add|passwd|del|list`: users kept in the store (passwords hashed by the
//! registry, read from a prompt or stdin, never from the command line).

use super::output::note;
use super::output::out;
use super::{call, reach, reach_or_create, Login, Reach};
use crate::auth::passwords;
use crate::config::Config;
use serde_json::{json, Value};
use std::io::BufRead;

/// `outpost user add NAME` (`create`) or `outpost user passwd NAME`.
pub fn put(config: &Config, login: &Login, name: &str, create: bool) -> Result<(), String> {
    // The registry first: signing in to a remote one may read stdin's first line.
    let reached = reach_or_create(config, login, create)?;
    let password = read_password(name)?;
    passwords::acceptable(&password)?;
    match reached {
        Reach::Online(at) => {
            let body = json!({ "password": password }).to_string();
            let (method, ok) = if create { ("POST", 201) } else { ("PUT", 200) };
            call(
                &at,
                method,
                &format!("/admin/users/{name}"),
                Some(&body),
                ok,
            )?;
        }
        Reach::Offline(store, _) => store
            .user_put(name, &passwords::hash(&password), create)
            .map_err(|e| format!("user {name}: {e}"))?,
    }
    if create {
        out!("added user {name}");
    } else {
        out!("changed the password of {name}");
    }
    // The local configuration says nothing about a registry elsewhere.
    if config.auth.is_none() && login.server.is_none() {
        note!(
            "note: auth is off in this configuration (no \"access\" rules): passwords are not \
             asked for until it is on"
        );
    }
    Ok(())
}

/// `outpost user del NAME`.
pub fn delete(config: &Config, login: &Login, name: &str) -> Result<(), String> {
    match reach(config, login)? {
        Reach::Online(at) => {
            call(&at, "DELETE", &format!("/admin/users/{name}"), None, 200)?;
        }
        Reach::Offline(store, _) => store
            .user_delete(name)
            .map_err(|e| format!("user {name}: {e}"))?,
    }
    out!("deleted user {name}");
    Ok(())
}

/// `outpost user list`: the store's users, then the htpasswd file's.
pub fn list(config: &Config, login: &Login) -> Result<(), String> {
    let (users, htpasswd) = match reach(config, login)? {
        Reach::Online(at) => {
            let v = call(&at, "GET", "/admin/users", None, 200)?;
            let names = |v: &Value| -> Option<Vec<String>> {
                v.as_array().map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
            };
            (
                names(&v["users"]).unwrap_or_default(),
                names(&v["htpasswd"]),
            )
        }
        Reach::Offline(store, _) => {
            let users = store.users().map_err(|e| e.to_string())?;
            let htpasswd = match config.auth.as_ref().and_then(|a| a.htpasswd.as_ref()) {
                Some(p) => Some(passwords::Htpasswd::load(p)?.users()),
                None => None,
            };
            (users, htpasswd)
        }
    };
    for u in &users {
        out!("{u}");
    }
    for u in htpasswd.iter().flatten() {
        if !users.contains(u) {
            out!("{u} (htpasswd)");
        }
    }
    if users.is_empty() && htpasswd.as_ref().is_none_or(Vec::is_empty) {
        note!("no users");
    }
    Ok(())
}

/// The password: asked twice without echo on a terminal, else the first line of stdin.
fn read_password(user: &str) -> Result<String, String> {
    // SAFETY: isatty only inspects file descriptor 0.
    if unsafe { libc::isatty(0) } == 1 {
        let first = prompt_hidden(&format!("password for {user}: "))?;
        let again = prompt_hidden("the same again: ")?;
        if first != again {
            return Err("the two passwords differ: nothing changed".into());
        }
        return Ok(first);
    }
    stdin_line()
}

/// The first line of stdin, without its line end: a password piped in by a script.
pub fn stdin_line() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("reading the password from stdin: {e}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Reads a line from the terminal with echo off.
pub fn prompt_hidden(prompt: &str) -> Result<String, String> {
    let _ = std::io::Write::write_all(&mut std::io::stderr(), prompt.as_bytes());
    // SAFETY: termios is plain data; tcgetattr fills it for fd 0, a terminal (checked).
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
        return Err("cannot read the terminal's settings".into());
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: sets fd 0's attributes from a copy of its own.
    unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    // SAFETY: restores what tcgetattr returned.
    unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
    read.map_err(|e| format!("reading the password: {e}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}
