//! The log: access lines name the client, the user, the status, the body bytes sent and
//! received and the time taken; `--log-format json` makes every line one JSON object.

mod common;
use common::*;
use serde_json::{json, Value};
use std::process::Command;

const PASSWORD: &str = "alice-secret-1234";

/// The access line of the request that starts with `start` (`METHOD URL STATUS`).
fn line<'a>(lines: &'a [String], start: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no access line {start:?} in {lines:#?}"))
}

#[test]
fn access_lines_name_client_user_bytes_and_time() {
    let dir = TempDir::new("log-access");
    let cfg = dir.path().join("outpost.json");
    let config = json!({
        "listen": "127.0.0.1:0",
        "dataDir": dir.path().join("data"),
        "auth": {"admins": ["root"]},
        "access": [{"repositories": "team/*", "pull": ["alice"], "push": ["alice"]}],
    });
    std::fs::write(&cfg, config.to_string()).unwrap();
    let cfg = cfg.to_str().unwrap();
    let out = outpost_stdin(
        &["user", "add", "alice", "--config", cfg],
        &format!("{PASSWORD}\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let reg = Registry::start_with(&dir.path().join("data"), &["--config", cfg]);
    let alice = reg.client().as_user("alice", PASSWORD);

    let data = bytes(1, 300_000);
    // A chunked PATCH declares no length: what was read is counted.
    let put = alice.push_streamed("team/app", &data);
    assert_eq!(put.status, 201, "{put:?}");
    let digest = sha256(&data);
    let blob = format!("/v2/team/app/blobs/{digest}");
    assert_eq!(alice.get(&blob).body, data);
    assert_eq!(alice.head(&blob).status, 200);
    assert_eq!(reg.client().get(&blob).status, 401);
    // A token login names the user whose credentials verified; a failed one names nobody.
    let token = "/token?service=outpost&scope=repository:team/app:pull";
    assert_eq!(alice.get(token).status, 200);
    let wrong = reg.client().as_user("alice", "not-the-password");
    assert_eq!(wrong.get(token).status, 401);

    let lines = reg.requests();
    let patch = lines
        .iter()
        .find(|l| l.starts_with("PATCH /v2/team/app/blobs/uploads/") && l.contains(" 202 "))
        .unwrap_or_else(|| panic!("no PATCH line in {lines:#?}"));
    assert!(
        patch.contains(" sent=0B received=300000B time=")
            && patch.ends_with("ms addr=127.0.0.1 user=alice"),
        "{patch}"
    );
    let get = line(&lines, &format!("GET {blob} 200 "));
    assert!(get.contains(" sent=300000B received=0B "), "{get}");
    assert!(get.ends_with(" addr=127.0.0.1 user=alice"), "{get}");
    let head = line(&lines, &format!("HEAD {blob} 200 "));
    assert!(head.contains(" sent=0B received=0B "), "{head}");
    let refused = line(&lines, &format!("GET {blob} 401 "));
    assert!(
        refused.ends_with(" addr=127.0.0.1 user=anonymous"),
        "{refused}"
    );
    let login = line(&lines, &format!("GET {token} 200 "));
    assert!(login.ends_with(" addr=127.0.0.1 user=alice"), "{login}");
    // Its line may reach the log after the marker's (another connection's thread).
    let log = reg.log_with(&format!("GET {token} 401 "));
    let failed = log
        .lines()
        .find(|l| l.contains(&format!("GET {token} 401 ")))
        .unwrap();
    assert!(
        failed.ends_with(" addr=127.0.0.1 user=anonymous"),
        "{failed}"
    );
    let ms: f64 = get
        .split(" time=")
        .nth(1)
        .and_then(|t| t.split("ms ").next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no time in {get}"));
    assert!((0.0..60_000.0).contains(&ms), "{get}");
}

#[test]
fn json_log_format_makes_every_line_one_object() {
    let dir = TempDir::new("log-json");
    let mut reg = Registry::start_with(&dir.path().join("data"), &["--log-format", "json"]);
    let c = reg.client();
    let data = bytes(2, 5000);
    let (digest, r) = c.push_blob("fleet/app", &data);
    assert_eq!(r.status, 201);
    let blob = format!("/v2/fleet/app/blobs/{digest}");
    assert_eq!(c.get(&blob).body, data);
    assert_eq!(c.get("/v2/fleet/app/manifests/none").status, 404);
    assert!(reg.terminate().success());
    reg.log_with(r#""message":"stopped""#);

    let lines = reg.log.lock().unwrap().clone();
    assert!(lines.len() >= 5, "{lines:#?}");
    let objects: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for o in &objects {
        for key in ["time", "level", "target", "message"] {
            assert!(o[key].is_string(), "no {key} in {o}");
        }
        let time = o["time"].as_str().unwrap();
        assert!(time.len() == 24 && time.ends_with('Z'), "{o}");
    }
    let access = |method: &str, path: &str| {
        objects
            .iter()
            .find(|o| o["method"] == method && o["path"] == path)
            .unwrap_or_else(|| panic!("no access object for {method} {path}: {lines:#?}"))
    };
    let push = access(
        "POST",
        &format!("/v2/fleet/app/blobs/uploads/?digest={digest}"),
    );
    assert_eq!(push["status"], 201);
    assert_eq!(push["received"], 5000);
    assert_eq!(push["bytes"], 0);
    assert_eq!(push["addr"], "127.0.0.1");
    assert_eq!(push["user"], "anonymous");
    assert_eq!(push["level"], "info");
    assert_eq!(push["target"], "outpost::http::access");
    assert!(push["duration_ms"].as_f64().is_some(), "{push}");
    let get = access("GET", &blob);
    assert_eq!(
        (get["status"].clone(), get["bytes"].clone()),
        (json!(200), json!(5000))
    );
    assert_eq!(access("GET", "/v2/fleet/app/manifests/none")["status"], 404);
    // Lines of other modules are objects too.
    assert!(objects.iter().any(|o| o["target"] == "outpost::server"
        && o["message"].as_str().unwrap().starts_with("listening on ")));
}

#[test]
fn a_log_format_other_than_text_or_json_is_refused() {
    let flag = outpost()
        .args(["serve", "--log-format", "xml"])
        .output()
        .unwrap();
    assert_eq!(flag.status.code(), Some(2));
    let err = String::from_utf8_lossy(&flag.stderr);
    assert!(
        err.starts_with("outpost: --log-format: \"xml\" is neither text nor json"),
        "{err}"
    );

    let dir = TempDir::new("log-bad");
    let cfg = dir.path().join("outpost.json");
    std::fs::write(&cfg, r#"{"logFormat": "yaml", "listen": "127.0.0.1:0"}"#).unwrap();
    let out = outpost()
        .args(["serve", "--config", cfg.to_str().unwrap(), "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("logFormat: \"yaml\" is neither text nor json"),
        "{err}"
    );
}

#[test]
fn json_lines_keep_their_journal_priority() {
    // A port that is taken: the registry logs, then ends with its error line.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = TempDir::new("log-journal");
    let inner = serve(
        &dir.path().join("data"),
        &taken.local_addr().unwrap().to_string(),
    );
    // JOURNAL_STREAM names stderr's device and inode, as systemd sets it.
    let out = Command::new("sh")
        .arg("-c")
        .arg("JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec \"$@\"")
        .arg("sh")
        .arg(inner.get_program())
        .args(inner.get_args())
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    for l in log.lines() {
        let (priority, object) = l.split_at(3);
        assert!(matches!(priority, "<3>" | "<4>" | "<6>"), "{log}");
        let o: Value = serde_json::from_str(object).unwrap_or_else(|e| panic!("{e}: {l}"));
        if priority == "<3>" {
            assert_eq!(o["level"], "error", "{l}");
            assert!(
                o["message"].as_str().unwrap().starts_with("cannot listen"),
                "{l}"
            );
        }
    }
    assert!(log.lines().any(|l| l.starts_with("<3>{")), "{log}");
}
