//! The CLI through the real binary: help per command, one-line usage errors, a closed pipe,
//! and managing a registry elsewhere over HTTPS with credentials (`--server https://…
//! --user … --ca-file …`), with messages that say exactly what happened.

mod common;

use common::oci::{image, index, layout, new_layout};
use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

/// `outpost ARGS` with stdin closed.
fn run(args: &[&str]) -> Output {
    outpost()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run outpost")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_is_per_command_with_an_example() {
    // The overview: every command on one line, and where to read more.
    for args in [&["help"][..], &["--help"], &["-h"]] {
        let o = run(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        let s = stdout(&o);
        for cmd in [
            "serve",
            "settings",
            "repo create",
            "repo delete",
            "repo move",
            "key list",
            "key generate",
            "key rotate",
            "user add",
            "user passwd",
            "user del",
            "user list",
            "tls self-signed",
            "export",
            "import",
            "mirror run",
            "mirror status",
            "gc",
            "du",
            "scrub",
            "audit",
            "compact",
        ] {
            assert!(
                s.lines().any(|l| l.trim_start().starts_with(cmd)),
                "{cmd} missing from the overview:\n{s}"
            );
        }
        assert!(s.contains("outpost help COMMAND"), "{s}");
        assert!(s.lines().count() < 40, "the overview is short:\n{s}");
    }
    // One command's page, by either spelling: its usage, its options, an example.
    let gc = stdout(&run(&["help", "gc"]));
    assert_eq!(gc, stdout(&run(&["gc", "--help"])));
    assert!(
        gc.starts_with("Usage: outpost gc [--dry-run] [--json] [COMMON]"),
        "{gc}"
    );
    assert!(gc.contains("Example:\n  outpost gc --dry-run"), "{gc}");
    assert!(
        gc.contains("--server URL, --user NAME, --ca-file FILE"),
        "{gc}"
    );
    assert!(!gc.contains("repo create"), "only gc's page:\n{gc}");
    // A group: every subcommand, the common options once.
    let user = stdout(&run(&["user", "--help"]));
    for sub in ["add", "passwd", "del", "list"] {
        assert!(
            user.contains(&format!("Usage: outpost user {sub} NAME"))
                || user.contains(&format!("Usage: outpost user {sub} [COMMON]")),
            "{sub}:\n{user}"
        );
    }
    assert_eq!(user.matches("COMMON options:").count(), 1, "{user}");
    assert!(!user.contains("outpost gc"), "{user}");
    // A subcommand, with arguments already given; serve keeps its option list.
    let create = stdout(&run(&["repo", "create", "plant/app", "--help"]));
    assert!(
        create.starts_with("Usage: outpost repo create NAME"),
        "{create}"
    );
    assert!(!create.contains("repo delete"), "{create}");
    let serve = stdout(&run(&["help", "serve"]));
    for opt in [
        "--max-connections N",
        "--chunk-size SIZE",
        "--automatic-mount",
    ] {
        assert!(serve.contains(opt), "{opt}:\n{serve}");
    }
    let audit = stdout(&run(&["help", "audit"]));
    assert!(
        audit.starts_with("Usage: outpost audit [--since T] [--repo R] [--user U] [--json]"),
        "{audit}"
    );
    // Help on something that does not exist is a usage error.
    let o = run(&["help", "frobnicate"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(o.stdout.is_empty());
}

#[test]
fn a_usage_error_is_one_line_and_a_pointer() {
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["gc", "--foo"],
            "--foo is not an option of gc",
            "outpost help gc",
        ),
        (
            &["gc", "--foo=1"],
            "--foo is not an option of gc",
            "outpost help gc",
        ),
        (
            &["gc", "-x"],
            "-x is not an option of gc",
            "outpost help gc",
        ),
        (
            &["repo", "create"],
            "repo create takes one argument",
            "outpost help repo create",
        ),
        (
            &["user", "frob"],
            "there is no command user \"frob\"",
            "outpost help user",
        ),
        (
            &["repo"],
            "repo needs a subcommand: create, delete, move",
            "outpost help repo",
        ),
        (
            &["frobnicate"],
            "there is no command \"frobnicate\"",
            "outpost help",
        ),
        (
            &["serve", "--json"],
            "--json is not an option of serve",
            "outpost help serve",
        ),
        (
            &["tls", "self-signed", "--days", "x"],
            "",
            "outpost help tls self-signed",
        ),
    ];
    for (args, message, pointer) in cases {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(o.stdout.is_empty(), "{args:?}");
        let err = stderr(&o);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{args:?}: {err}");
        assert!(lines[0].starts_with("outpost: "), "{err}");
        assert!(lines[0].contains(message), "{args:?}: {err}");
        assert_eq!(lines[1], format!("Try '{pointer}'."), "{args:?}");
    }
}

#[test]
fn a_closed_pipe_ends_output_quietly() {
    // The reader is gone before the first byte: every write meets EPIPE.
    let gone = || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        writer
    };
    for args in [&["--help"][..], &["help", "serve"], &["--version"]] {
        let o = outpost()
            .args(args)
            .stdout(gone())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = stderr(&o);
        assert!(
            !err.contains("panicked") && !err.contains("failed printing"),
            "{err}"
        );
        assert_eq!(o.status.code(), Some(0), "{args:?}: {err}");
    }
    // `outpost --help | head -1`: one line read, then the pipe closed.
    let mut child = outpost()
        .args(["help", "serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("Usage: outpost serve"), "{first}");
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(o.status.code(), Some(101), "{err}");
    // A command's work is done whoever reads its output.
    let dir = TempDir::new("cli-pipe");
    let key = dir.path().join("master.key");
    let o = outpost()
        .args(["key", "generate"])
        .arg(&key)
        .stdout(gone())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(key.exists());
    // Nor does a closed stderr stop one half-way: `outpost user add … 2>&1 | head -0`.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut child = outpost()
        .args(["user", "add", "carol", "--data-dir"])
        .arg(&data)
        .stdin(Stdio::piped())
        .stdout(gone())
        .stderr(gone())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"carol-secret-1\n")
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let o = outpost()
        .args(["user", "list", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("carol"),
        "{o:?}"
    );
    // A usage error with stderr closed still exits 2, not in a panic.
    let o = outpost()
        .args(["gc", "--frob"])
        .stderr(gone())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

const ROOT_PW: &str = "root-secret-333";

/// A registry serving HTTPS (a self-signed certificate for 127.0.0.1) with auth on: root is
/// an admin, alice a user who may only pull; a mirror whose upstream does not answer.
struct Secure {
    dir: TempDir,
    /// Kept running for the test.
    _reg: Registry,
    cert: PathBuf,
    server: String,
}

impl Secure {
    fn new() -> Secure {
        let dir = TempDir::new("cli-https");
        let (cert, key) = self_signed(&dir.path().join("tls"));
        let config = json!({
            "listen": "127.0.0.1:0",
            "dataDir": dir.path().join("data"),
            "tls": {"certFile": cert, "keyFile": key},
            "auth": {"admins": ["root"]},
            "access": [{"repositories": "*", "pull": ["authenticated"], "push": ["root"],
                        "delete": ["root"]}],
            "mirrors": [{"name": "hq", "upstream": "http://127.0.0.1:9",
                         "repositories": ["hq/app"]}]
        });
        let cfg = dir.path().join("outpost.json");
        std::fs::write(&cfg, config.to_string()).unwrap();
        let cfg_s = cfg.to_str().unwrap();
        let o = outpost_stdin(
            &["user", "add", "root", "--config", cfg_s],
            &format!("{ROOT_PW}\n"),
        );
        assert!(o.status.success(), "{}", text(&o));
        let reg = Registry::start_with(&dir.path().join("data"), &["--config", cfg_s]);
        let server = format!("https://{}", reg.addr);
        Secure {
            dir,
            _reg: reg,
            cert,
            server,
        }
    }

    /// `outpost ARGS --server URL --ca-file CERT [--user USER]` from another directory (no
    /// local store to find), the password in `$OUTPOST_PASSWORD`, `stdin` written to it.
    fn cli(&self, args: &[&str], user: Option<(&str, &str)>, stdin: &str) -> Output {
        let elsewhere = self.dir.path().join("laptop");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let mut cmd = outpost();
        cmd.args(args)
            .args(["--server", &self.server, "--ca-file"])
            .arg(&self.cert)
            .current_dir(&elsewhere)
            .env_remove("OUTPOST_USER")
            .env_remove("OUTPOST_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((u, pw)) = user {
            cmd.args(["--user", u]).env("OUTPOST_PASSWORD", pw);
        }
        let mut child = cmd.spawn().unwrap();
        let _ = std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes());
        child.wait_with_output().unwrap()
    }

    /// `cli` as root, which must succeed; its stdout.
    fn ok(&self, args: &[&str], stdin: &str) -> String {
        let o = self.cli(args, Some(("root", ROOT_PW)), stdin);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        stdout(&o)
    }
}

/// A two-platform image in a layout directory `name` under `root`, tagged v1.
fn multi_platform(root: &Path, name: &str) -> PathBuf {
    let dir = new_layout(root, name);
    let amd = image(&dir, "amd64", &[bytes(1, 20_000), bytes(2, 3_000)]);
    let arm = image(&dir, "arm64", &[bytes(3, 20_000), bytes(4, 3_000)]);
    index(&dir, &amd, &arm, "v1");
    dir
}

#[test]
fn remote_management_over_https_with_credentials() {
    let s = Secure::new();
    let tmp = s.dir.path();

    let out = s.ok(&["settings"], "");
    assert!(
        out.contains("blobMounting") && out.contains("automaticMount"),
        "{out}"
    );
    let out = s.ok(&["settings", "automaticMount=disabled"], "");
    assert!(out.contains("automaticMount   disabled"), "{out}");

    // The admin's password from $OUTPOST_PASSWORD, the new user's from stdin.
    let out = s.ok(&["user", "add", "alice"], "alice-password-1\n");
    assert!(out.contains("added user alice"), "{out}");
    let out = s.ok(&["user", "list"], "");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["alice", "root"], "{out}");
    // With no $OUTPOST_PASSWORD: the admin's password is stdin's first line, the new one's
    // the second.
    let o = s.cli(
        &["user", "passwd", "alice", "--user", "root"],
        None,
        &format!("{ROOT_PW}\nalice-password-2\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stdout(&o).contains("changed the password of alice"),
        "{}",
        text(&o)
    );

    let out = s.ok(&["repo", "create", "plant/app"], "");
    assert!(
        out.contains("created repository plant/app (plaintext)"),
        "{out}"
    );
    let out = s.ok(&["key", "list"], "");
    assert!(out.contains("no data keys"), "{out}");

    // Import over HTTPS: a two-platform image, then the same again (already present).
    let multi = multi_platform(tmp, "multi");
    let m = multi.to_str().unwrap();
    let out = s.ok(&["import", m, "--repo", "plant/app:v1"], "");
    assert!(out.contains("imported plant/app:v1"), "{out}");
    assert!(out.contains("6 blob(s) stored"), "{out}");
    let out = s.ok(&["import", m, "--repo", "plant/app:v1"], "");
    assert!(
        out.contains(": 0 blob(s) stored, 6 already present"),
        "{out}"
    );
    assert!(!out.contains("moved"), "{out}");

    // Export over HTTPS, arm64 only, and import that over the two-platform tag: it moves.
    let one = tmp.join("arm64.tar");
    let out = s.ok(
        &[
            "export",
            "plant/app:v1",
            "--platform",
            "linux/arm64",
            "-o",
            one.to_str().unwrap(),
        ],
        "",
    );
    assert!(out.contains("exported plant/app:v1"), "{out}");
    let single = new_layout(tmp, "single");
    let arm = image(&single, "arm64", &[bytes(3, 20_000), bytes(4, 3_000)]);
    layout(&single, OCI_MANIFEST, &arm, "v1");
    let out = s.ok(
        &["import", single.to_str().unwrap(), "--repo", "plant/app:v1"],
        "",
    );
    assert!(
        out.contains(": 0 blob(s) stored, 3 already present"),
        "{out}"
    );
    let moved = out
        .lines()
        .find(|l| l.contains("moved"))
        .unwrap_or_default();
    assert!(
        moved.contains("tag plant/app:v1 moved from sha256:")
            && moved.contains("(an index of 2 platform(s)) to ")
            && moved.contains(&format!("{} (a single-platform image)", arm.0)),
        "{out}"
    );
    // The exported arm64-only index imports too (it lists one platform).
    let out = s.ok(
        &["import", one.to_str().unwrap(), "--repo", "plant/copy:v1"],
        "",
    );
    assert!(out.contains("imported plant/copy:v1"), "{out}");

    // A refused import says so, and only that.
    let o = s.cli(
        &["import", m, "--repo", "plant/app:v2"],
        Some(("alice", "alice-password-2")),
        "",
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(!stdout(&o).contains("stored"), "{}", text(&o));
    assert!(stderr(&o).contains("not imported"), "{}", text(&o));

    // Mirrors: the status, and a pass that fails names its mirror.
    let out = s.ok(&["mirror", "status"], "");
    assert!(out.contains("hq: http://127.0.0.1:9"), "{out}");
    let o = s.cli(&["mirror", "run"], Some(("root", ROOT_PW)), "");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("mirror(s) hq failed"), "{}", text(&o));

    let out = s.ok(&["gc", "--dry-run"], "");
    assert!(out.contains("would"), "{out}");
    let out = s.ok(&["gc", "--json"], "");
    let _: serde_json::Value = serde_json::from_str(&out).expect("gc --json is JSON");
    let out = s.ok(&["du"], "");
    assert!(
        out.contains("plant/app") && out.contains("REPOSITORY"),
        "{out}"
    );
    let out = s.ok(&["scrub", "--status"], "");
    assert!(out.contains("last full pass"), "{out}");

    // A user who is no admin is told so.
    let o = s.cli(&["du"], Some(("alice", "alice-password-2")), "");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains("(403)")
            && err.contains("alice may not do this: give --user NAME of an admin"),
        "{err}"
    );

    let out = s.ok(&["repo", "delete", "plant/copy"], "");
    assert!(out.contains("deleted repository plant/copy"), "{out}");
    let out = s.ok(&["user", "del", "alice"], "");
    assert!(out.contains("deleted user alice"), "{out}");
    // The audit trail over HTTPS: --user is its filter there, the sign-in $OUTPOST_USER.
    let mut cmd = outpost();
    cmd.args([
        "audit",
        "--user",
        "root",
        "--json",
        "--server",
        &s.server,
        "--ca-file",
    ])
    .arg(&s.cert)
    .env("OUTPOST_USER", "root")
    .env("OUTPOST_PASSWORD", ROOT_PW)
    .stdin(Stdio::null());
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let trail: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let actions: Vec<&str> = trail["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["user"] == "root")
        .filter_map(|r| r["action"].as_str())
        .collect();
    for done in [
        "repository.create",
        "user.add",
        "user.passwd",
        "repository.delete",
        "user.delete",
    ] {
        assert!(actions.contains(&done), "{done} missing from {trail}");
    }

    // What goes wrong says what to do, on one line.
    let last = |o: &Output| stderr(o).lines().last().unwrap_or_default().to_owned();
    let o = s.cli(&["du"], None, "");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        last(&o).contains("(401)") && last(&o).contains("give --user NAME of an admin"),
        "{}",
        text(&o)
    );
    let o = s.cli(&["user", "list"], Some(("root", "wrong-password")), "");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = last(&o);
    assert!(
        err.starts_with("outpost: ") && err.contains("the password of root was refused"),
        "{}",
        text(&o)
    );
    let o = outpost()
        .args(["du", "--server", &s.server, "--user", "root"])
        .env("OUTPOST_PASSWORD", ROOT_PW)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(last(&o).contains("--ca-file"), "{}", text(&o));
    // No password is no login attempt: refused here, before the registry counts a failure.
    let o = s.cli(&["du", "--user", "root"], None, "");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        last(&o).contains("no password for --user root"),
        "{}",
        text(&o)
    );
    // A password in the URL is refused and never echoed.
    let url = s.server.replace("https://", "https://root:url-secret-9@");
    let o = outpost()
        .args(["du", "--server", &url])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!text(&o).contains("url-secret-9"), "{}", text(&o));
}
