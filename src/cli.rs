//! Commands besides `serve` that manage a registry: over its HTTP admin API when it runs, or
//! directly on its store when it does not.

use crate::config::Config;
use crate::settings::Settings;
use crate::storage::{Store, StoreOptions};
use serde_json::{Map, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// `outpost settings [NAME=VALUE ...]`: shows the runtime switches, changing the given ones
/// first. VALUE is `enabled`, `disabled`, or `default` (back to the config file's value).
pub fn settings(config: &Config, server: Option<&str>, changes: &[String]) -> Result<(), String> {
    let mut patch = Map::new();
    for change in changes {
        let (name, value) = change
            .split_once('=')
            .ok_or_else(|| format!("{change:?}: write NAME=VALUE, e.g. blobMounting=disabled"))?;
        let value = match value {
            "default" => Value::Null,
            v => Value::String(v.to_owned()),
        };
        patch.insert(name.to_owned(), value);
    }
    let addr = match server {
        Some(s) => server_addr(s)?,
        None => local_addr(config.listen),
    };
    let shown = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(conn) => {
            let (method, body) = if patch.is_empty() {
                ("GET", None)
            } else {
                ("PATCH", Some(Value::Object(patch).to_string()))
            };
            let reply = request(conn, &addr, method, "/admin/settings", body.as_deref())
                .map_err(|e| format!("talking to outpost at {addr}: {e}"))?;
            reply_json(reply, &addr)?
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused && server.is_none() => {
            let path = config.data_dir.join("outpost.redb");
            if !path.exists() {
                return Err(format!(
                    "outpost is not running at {addr} and there is no store at {} \
                     (give --config, --data-dir or --server)",
                    path.display()
                ));
            }
            let store = open_offline(config, &path)?;
            let settings = Settings::load(config, &store).map_err(|e| e.to_string())?;
            if !patch.is_empty() {
                settings
                    .apply(&store, &Value::Object(patch))
                    .map_err(|e| match e {
                        crate::settings::SettingsError::Invalid(m) => m,
                        crate::settings::SettingsError::Store(e) => e.to_string(),
                    })?;
                eprintln!(
                    "outpost is not running at {addr}: changed {} directly; \
                     it applies from the next start",
                    path.display()
                );
            }
            settings.to_json()
        }
        Err(e) => return Err(format!("cannot reach outpost at {addr}: {e}")),
    };
    print_settings(&shown);
    Ok(())
}

fn print_settings(v: &Value) {
    let Some(obj) = v.as_object() else { return };
    for (name, s) in obj {
        let value = s["value"].as_str().unwrap_or("?");
        let note = if s["source"] == "runtime" {
            format!(
                "set at runtime; the config file says {}",
                s["configFile"].as_str().unwrap_or("?")
            )
        } else {
            "config file".to_owned()
        };
        println!("{name:<16} {value:<9} ({note})");
    }
}

fn open_offline(config: &Config, path: &std::path::Path) -> Result<Store, String> {
    let options = StoreOptions {
        cache_size: config.cache_size,
        chunk_size: config.chunk_size,
        min_free_space: config.min_free_space as u64,
    };
    Store::open(path, &options).map_err(|e| {
        format!(
            "cannot open store {}: {e} (if outpost is running on another address, pass --server)",
            path.display()
        )
    })
}

/// Where a registry listening on `listen` is reached from this machine.
fn local_addr(listen: SocketAddr) -> SocketAddr {
    let mut a = listen;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => [127, 0, 0, 1].into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}

/// `http://host:port` or `host:port`.
fn server_addr(s: &str) -> Result<SocketAddr, String> {
    if s.starts_with("https://") {
        return Err(format!("--server {s}: this command speaks plain HTTP only"));
    }
    let hostport = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
    hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("--server {s:?}: expected http://HOST:PORT"))
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
fn request(
    mut conn: TcpStream,
    addr: &SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, Vec<u8>)> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    conn.take(16 << 20).read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("malformed response"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed status line"))?;
    Ok((status, raw[split + 4..].to_vec()))
}

/// The JSON of a 200 answer, or the error message the registry sent.
fn reply_json((status, body): (u16, Vec<u8>), addr: &SocketAddr) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(&body)
        .map_err(|_| format!("outpost at {addr} answered {status} without JSON"))?;
    if status == 200 {
        return Ok(v);
    }
    let msg = v["errors"][0]["message"].as_str().unwrap_or("no message");
    Err(format!("outpost at {addr} refused ({status}): {msg}"))
}
