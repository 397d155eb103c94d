//! The audit trail through the real binary: a scripted session of changes by two users from
//! two addresses is recorded exactly, in order, across a SIGKILL; the bound drops the oldest;
//! the records read the same through `outpost audit` and `/admin/audit`; pulls are counted.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

const ONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const TWO: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A registry with auth on (alice and bob push and delete in team/*, root is the admin) and
/// `extra` config (e.g. `audit`); users added with the CLI before it starts.
fn site(tag: &str, extra: Value) -> (TempDir, Registry) {
    let dir = TempDir::new(tag);
    let mut config = json!({
        "listen": "127.0.0.1:0",
        "dataDir": dir.path().join("data"),
        "auth": {"admins": ["root"]},
        "access": [{"repositories": "team/*", "pull": ["authenticated"],
                    "push": ["alice", "bob"], "delete": ["alice", "bob"]}],
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(cfg(dir.path()), config.to_string()).unwrap();
    for user in ["alice", "bob", "root"] {
        let out = cli(
            dir.path(),
            &["user", "add", user],
            &format!("{user}-password\n"),
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let reg = Registry::start_with(
        &dir.path().join("data"),
        &["--config", cfg(dir.path()).to_str().unwrap()],
    );
    (dir, reg)
}

fn cfg(dir: &Path) -> std::path::PathBuf {
    dir.join("outpost.json")
}

fn cli(dir: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    let cfg = cfg(dir);
    outpost_stdin(
        &[args, &["--config", cfg.to_str().unwrap()]].concat(),
        stdin,
    )
}

fn user(reg: &Registry, name: &str, from: Ipv4Addr) -> Client {
    reg.client()
        .bound_to(from)
        .as_user(name, &format!("{name}-password"))
}

/// A record as one comparable line: who, from where, what, where, and every detail.
fn summary(r: &Value) -> String {
    let mut s = format!(
        "{} {} {} {}",
        r["user"].as_str().unwrap(),
        r["addr"].as_str().unwrap_or("-"),
        r["action"].as_str().unwrap(),
        r["repo"].as_str().unwrap_or("-")
    );
    for (k, v) in r["details"].as_object().into_iter().flatten() {
        match v {
            Value::String(t) => s.push_str(&format!(" {k}={t}")),
            v => s.push_str(&format!(" {k}={v}")),
        }
    }
    s
}

fn records(reg: &Registry, query: &str) -> Vec<Value> {
    let r = user(reg, "root", ONE).get(&format!("/admin/audit{query}"));
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["records"].as_array().unwrap().clone()
}

/// `outpost audit --json ARGS`, each record summarised.
fn cli_records(dir: &Path, args: &[&str]) -> Vec<String> {
    let out = cli(dir, &[&["audit", "--json"], args].concat(), "");
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(summary)
        .collect()
}

/// Creates repository `name` through the admin API as `c`.
fn create_repo(c: &Client, name: &str) {
    let r = c.req(
        "PUT",
        &format!("/admin/repositories/{name}"),
        &[],
        Body::None,
    );
    assert_eq!(r.status, 201, "{r:?}");
}

fn digest_of(manifest: &[u8]) -> String {
    sha256(manifest)
}

fn config_of(manifest: &[u8]) -> (String, u64) {
    let v: Value = serde_json::from_slice(manifest).unwrap();
    (
        v["config"]["digest"].as_str().unwrap().to_owned(),
        v["config"]["size"].as_u64().unwrap(),
    )
}

#[test]
fn a_session_of_two_users_is_recorded_in_order_across_a_crash() {
    let (dir, mut reg) = site("audit-session", json!({}));
    let alice = user(&reg, "alice", ONE);
    let bob = user(&reg, "bob", TWO);
    let root1 = user(&reg, "root", ONE);
    let root2 = user(&reg, "root", TWO);
    let mut want: Vec<String> = ["alice", "bob", "root"]
        .iter()
        .map(|u| format!("operator - user.add - name={u}"))
        .collect();

    let m1 = push_tagged(&alice, "team/app", "v1", 1);
    let (d1, n1) = (digest_of(&m1), m1.len());
    want.push(format!(
        "alice 127.0.0.1 manifest.push team/app digest={d1} mediaType={OCI_MANIFEST} size={n1} tag=v1"
    ));
    want.push(format!(
        "alice 127.0.0.1 tag.set team/app digest={d1} tag=v1"
    ));

    let m2 = push_tagged(&bob, "team/app", "v1", 2);
    let (d2, n2) = (digest_of(&m2), m2.len());
    want.push(format!(
        "bob 127.0.0.2 manifest.push team/app digest={d2} mediaType={OCI_MANIFEST} size={n2} tag=v1"
    ));
    want.push(format!(
        "bob 127.0.0.2 tag.move team/app from={d1} tag=v1 to={d2}"
    ));

    let (c2, c2_size) = config_of(&m2);
    assert_eq!(bob.mount("team/other", &c2, Some("team/app")).status, 201);
    want.push(format!(
        "bob 127.0.0.2 blob.mount team/other digest={c2} from=team/app size={c2_size}"
    ));

    assert_eq!(alice.delete("/v2/team/app/manifests/v1").status, 202);
    want.push(format!(
        "alice 127.0.0.1 tag.delete team/app digest={d2} tag=v1"
    ));
    assert_eq!(
        alice.delete(&format!("/v2/team/app/manifests/{d1}")).status,
        202
    );
    want.push(format!(
        "alice 127.0.0.1 manifest.delete team/app digest={d1} tags=[]"
    ));
    assert_eq!(
        bob.delete(&format!("/v2/team/other/blobs/{c2}")).status,
        202
    );
    want.push(format!("bob 127.0.0.2 blob.delete team/other digest={c2}"));

    let patch = br#"{"blobMounting": "disabled"}"#;
    let r = root1.req("PATCH", "/admin/settings", &[], Body::Bytes(patch));
    assert_eq!(r.status, 200, "{r:?}");
    want.push("root 127.0.0.1 setting.set - name=blobMounting value=disabled".into());
    create_repo(&root2, "team/new");
    want.push("root 127.0.0.2 repository.create team/new".into());
    assert_eq!(root2.delete("/admin/repositories/team/new").status, 200);
    want.push("root 127.0.0.2 repository.delete team/new blobsFreed=0".into());

    // A failed login: recorded without the password, tallied, written at the next flush.
    let wrong = reg.client().bound_to(TWO).as_user("mallory", "guess-1");
    assert_eq!(wrong.get("/v2/").status, 401);
    want.push(r#"anonymous 127.0.0.2 login.failed - count=1 users=["mallory"]"#.into());
    let until = Instant::now() + bound(Duration::from_secs(10));
    while !records(&reg, "?user=anonymous")
        .iter()
        .any(|r| r["action"] == "login.failed")
    {
        assert!(Instant::now() < until, "failed login not recorded");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A durable change after it: the crash cannot take what came before.
    create_repo(&root1, "team/last");
    want.push("root 127.0.0.1 repository.create team/last".into());

    reg.kill();
    let mut reg = Registry::start_with(
        &dir.path().join("data"),
        &["--config", cfg(dir.path()).to_str().unwrap()],
    );
    let all = records(&reg, "");
    let got: Vec<String> = all.iter().map(summary).collect();
    assert_eq!(got, want);
    let seqs: Vec<u64> = all.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(!reg.log_text().contains("guess-1"));

    // Filters.
    let bobs: Vec<String> = records(&reg, "?user=bob").iter().map(summary).collect();
    let want_bob: Vec<String> = want
        .iter()
        .filter(|w| w.starts_with("bob "))
        .cloned()
        .collect();
    assert_eq!(bobs, want_bob);
    assert_eq!(records(&reg, "?repo=team/other").len(), 2);
    assert_eq!(records(&reg, "?since=1h").len(), want.len());
    assert_eq!(records(&reg, "?since=2999-01-01T00:00:00Z").len(), 0);
    let last2: Vec<String> = records(&reg, "?limit=2").iter().map(summary).collect();
    assert_eq!(last2, want[want.len() - 2..]);
    let bad = user(&reg, "root", ONE).get("/admin/audit?since=yesterday");
    assert_eq!(bad.status, 400);
    assert_eq!(user(&reg, "alice", ONE).get("/admin/audit").status, 403);

    // The CLI, through the running registry's admin socket: the same records.
    assert_eq!(cli_records(dir.path(), &[]), want);
    let out = cli(dir.path(), &["audit", "--user", "bob", "--since", "1h"], "");
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), want_bob.len(), "{lines:?}");
    assert!(
        lines[3].contains(" bob 127.0.0.2 blob.delete team/other digest="),
        "{lines:?}"
    );

    // And on the stopped store.
    assert!(reg.terminate().success());
    let offline = cli_records(dir.path(), &["--repo", "team/app"]);
    let want_app: Vec<String> = want
        .iter()
        .filter(|w| w.contains(" team/app "))
        .cloned()
        .collect();
    assert_eq!(offline, want_app);
    let out = cli(dir.path(), &["audit", "--since", "last week"], "");
    assert!(!out.status.success());
    assert!(text(&out).contains("--since"), "{}", text(&out));
}

#[test]
fn the_bound_drops_the_oldest_records() {
    let (_dir, reg) = site(
        "audit-bound",
        json!({"audit": {"maxRecords": 4, "log": true}}),
    );
    // Three user.add records so far; six repository changes more.
    let root = user(&reg, "root", ONE);
    for i in 0..3 {
        create_repo(&root, &format!("team/r{i}"));
        let path = format!("/admin/repositories/team/r{i}");
        assert_eq!(root.delete(&path).status, 200);
    }
    let all = records(&reg, "");
    let got: Vec<String> = all.iter().map(summary).collect();
    assert_eq!(
        got,
        [
            "root 127.0.0.1 repository.create team/r1",
            "root 127.0.0.1 repository.delete team/r1 blobsFreed=0",
            "root 127.0.0.1 repository.create team/r2",
            "root 127.0.0.1 repository.delete team/r2 blobsFreed=0",
        ]
    );
    let seqs: Vec<u64> = all.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [6, 7, 8, 9]);
    // audit.log: each record is also a log line.
    reg.log_with("#9 root 127.0.0.1 repository.delete team/r2 blobsFreed=0");
}

#[test]
fn pulls_are_counted_per_repository_and_reference() {
    let (dir, mut reg) = site("audit-pulls", json!({}));
    let alice = user(&reg, "alice", ONE);
    let m = push_tagged(&alice, "team/app", "v1", 1);
    let d = digest_of(&m);
    for _ in 0..3 {
        assert_eq!(alice.get("/v2/team/app/manifests/v1").status, 200);
    }
    assert_eq!(alice.head("/v2/team/app/manifests/v1").status, 200); // not a pull
    assert_eq!(
        alice.get(&format!("/v2/team/app/manifests/{d}")).status,
        200
    );
    assert_eq!(alice.get("/v2/team/app/manifests/v2").status, 404); // not a pull either
    let counts = |reg: &Registry| -> Vec<(String, u64)> {
        let r = user(reg, "root", ONE).get("/admin/pulls?repo=team/app");
        assert_eq!(r.status, 200, "{r:?}");
        r.json()["pulls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                assert!(p["lastPulled"].as_str().unwrap().ends_with('Z'));
                (
                    p["reference"].as_str().unwrap().to_owned(),
                    p["count"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let mut want = vec![(d.clone(), 1), ("v1".to_owned(), 3)];
    want.sort();
    assert_eq!(counts(&reg), want);
    // Written at shutdown; counted on after the restart.
    reg.restart();
    let alice = user(&reg, "alice", ONE);
    assert_eq!(alice.get("/v2/team/app/manifests/v1").status, 200);
    want.iter_mut().find(|(r, _)| r == "v1").unwrap().1 = 4;
    assert_eq!(counts(&reg), want);
    // The CLI through the admin socket.
    let out = cli(dir.path(), &["audit", "--pulls"], "");
    let o = String::from_utf8_lossy(&out.stdout);
    assert!(
        o.lines()
            .any(|l| l.starts_with("team/app") && l.contains(" v1 ") && l.contains(" 4 ")),
        "{o}"
    );
    // A deleted repository's counts go with it, those in memory too: a new repository of
    // its name starts at nothing.
    assert_eq!(alice.get("/v2/team/app/manifests/v1").status, 200);
    let root = user(&reg, "root", ONE);
    assert_eq!(root.delete("/admin/repositories/team/app").status, 200);
    assert_eq!(counts(&reg), []);
    assert!(reg.terminate().success());
    let out = cli(dir.path(), &["audit", "--pulls"], "");
    assert!(out.status.success(), "{}", text(&out));
    let o = String::from_utf8_lossy(&out.stdout);
    assert!(!o.contains("team/app"), "{o}");
}

#[test]
fn the_collectors_deletions_are_its_own() {
    let (_dir, reg) = site(
        "audit-gc",
        json!({"gcGracePeriod": "0s", "gcInterval": "off"}),
    );
    let alice = user(&reg, "alice", ONE);
    let (digest, r) = alice.push_blob("team/tmp", &bytes(7, 3000));
    assert_eq!(r.status, 201);
    let root = user(&reg, "root", TWO);
    let r = root.req("POST", "/admin/gc", &[], Body::None);
    assert_eq!(r.status, 200, "{r:?}");
    let by_gc: Vec<String> = records(&reg, "?user=gc").iter().map(summary).collect();
    assert!(
        by_gc.contains(&format!("gc - blob.delete team/tmp digest={digest}")),
        "{by_gc:?}"
    );
    assert!(records(&reg, "?user=root").is_empty());
}

#[test]
fn a_long_trail_reads_through_the_admin_socket_and_hostile_names_stay_words() {
    let (dir, reg) = site("audit-long", json!({"audit": {"log": true}}));
    // 200 records: an answer far larger than one write (it came chunked, and was unreadable).
    let root = user(&reg, "root", ONE);
    for i in 0..100 {
        create_repo(&root, &format!("team/r{i}"));
        assert_eq!(
            root.delete(&format!("/admin/repositories/team/r{i}"))
                .status,
            200
        );
    }
    let got = cli_records(dir.path(), &[]);
    assert_eq!(got.len(), 203, "{got:?}");
    assert_eq!(
        got[202],
        "root 127.0.0.1 repository.delete team/r99 blobsFreed=0"
    );

    // A name tried at login is what a client claimed: the record is anonymous's, and the
    // name one quoted word of its line (no forged second line, no escape codes).
    let forged = "x\n2026-12-02T05:00:00Z #999 root 10.0.0.9 repository.erase team/app";
    let r = reg.client().as_user(forged, "wrong").get("/v2/");
    assert_eq!(r.status, 401);
    let log = reg.log_with("login.failed");
    assert!(!log.contains("\n2026-12-02T05:00:00Z #999"), "{log}");
    let out = cli(dir.path(), &["audit", "--user", "root"], "");
    assert!(out.status.success(), "{}", text(&out));
    let lines = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !lines.contains("login.failed") && !lines.contains("#999"),
        "{lines}"
    );
    let out = cli(dir.path(), &["audit", "--user", "anonymous"], "");
    let lines = String::from_utf8_lossy(&out.stdout).to_string();
    let failed: Vec<&str> = lines
        .lines()
        .filter(|l| l.contains("login.failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{lines}");
    assert!(
        failed[0].contains(r#"users=["x\n2026"#) || failed[0].contains("users=[\"x\\n2026"),
        "{lines}"
    );
}
