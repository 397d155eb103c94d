//! Access control through the real binary: who may pull, push and delete where (Basic and
//! bearer tokens), Docker's challenge shapes, mounts without read access, failed-login
//! limits, users on the command line and in an htpasswd file, TLS misconfiguration.

mod common;

use common::*;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

const PASSWORDS: [(&str, &str); 4] = [
    ("alice", "alice-secret-1"),
    ("bob", "bob-secret-22"),
    ("root", "root-secret-333"),
    ("ci", "ci-secret-4444"), // in the htpasswd file
];

fn password(user: &str) -> &'static str {
    PASSWORDS.iter().find(|(u, _)| *u == user).unwrap().1
}

/// A registry with auth on: users alice, bob, root (admin) in the store, ci in htpasswd.
struct Site {
    dir: TempDir,
    reg: Registry,
}

impl Site {
    fn new(tag: &str) -> Site {
        let dir = TempDir::new(tag);
        let htpasswd = dir.path().join("htpasswd");
        let ci = bcrypt::hash(password("ci"), 5).unwrap();
        std::fs::write(&htpasswd, format!("# CI runners\nci:{ci}\n")).unwrap();
        // Port 0: the commands find the registry by its store, never by an address.
        let config = json!({
            "listen": "127.0.0.1:0",
            "dataDir": dir.path().join("data"),
            "auth": {"admins": ["root"], "htpasswd": htpasswd},
            "access": [
                {"repositories": "team/*", "pull": ["authenticated"], "push": ["alice", "ci"],
                 "delete": ["alice"]},
                {"repositories": "public/*", "pull": ["anonymous"], "push": ["ci"]},
                {"repositories": "secret", "pull": ["alice"], "push": ["alice"]},
            ]
        });
        std::fs::write(dir.path().join("outpost.json"), config.to_string()).unwrap();
        for (user, pw) in &PASSWORDS[..3] {
            let out = cli_stdin(dir.path(), &["user", "add", user], &format!("{pw}\n"));
            assert!(out.status.success(), "{}", text(&out));
        }
        let cfg = dir.path().join("outpost.json");
        let reg = Registry::start_with(
            &dir.path().join("data"),
            &["--config", cfg.to_str().unwrap()],
        );
        Site { dir, reg }
    }

    fn user(&self, name: &str) -> Client {
        self.reg.client().as_user(name, password(name))
    }

    fn cli(&self, args: &[&str], stdin: &str) -> Output {
        cli_stdin(self.dir.path(), args, stdin)
    }

    /// A bearer token from `/token` for `scopes`, signed in as `user` (None: anonymous).
    fn token(&self, user: Option<&str>, scopes: &[&str]) -> String {
        let c = match user {
            Some(u) => self.user(u),
            None => self.reg.client(),
        };
        let q: Vec<String> = scopes.iter().map(|s| format!("scope={s}")).collect();
        let r = c.get(&format!("/token?service=outpost&{}", q.join("&")));
        assert_eq!(r.status, 200, "{r:?}");
        r.json()["token"].as_str().unwrap().to_owned()
    }
}

/// `outpost ARGS --config DIR/outpost.json` with `stdin`.
fn cli_stdin(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let cfg = dir.join("outpost.json");
    outpost_stdin(
        &[args, &["--config", cfg.to_str().unwrap()]].concat(),
        stdin,
    )
}

/// Pushes a small image as `c` into `repo:v1`; returns (config digest, manifest digest).
fn seed(c: &Client, repo: &str, n: u64) -> (String, String) {
    let manifest = push_image(c, repo, n, 1);
    let r = c.put_manifest(repo, "v1", OCI_MANIFEST, &manifest);
    assert_eq!(r.status, 201, "{r:?}");
    let v: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    (
        v["config"]["digest"].as_str().unwrap().to_owned(),
        sha256(&manifest),
    )
}

const ABSENT: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// The status of each verb as `c` in `repo`: every route family of pull, push and delete.
/// Allowed requests are chosen to change nothing (an invalid manifest, an absent digest).
fn verbs(c: &Client, repo: &str, config: &str) -> Vec<(&'static str, u16)> {
    let bad_manifest = c.put_manifest(repo, "x", OCI_MANIFEST, b"{}");
    vec![
        (
            "pull manifest",
            c.get(&format!("/v2/{repo}/manifests/v1")).status,
        ),
        (
            "pull head",
            c.head(&format!("/v2/{repo}/manifests/v1")).status,
        ),
        (
            "pull blob",
            c.get(&format!("/v2/{repo}/blobs/{config}")).status,
        ),
        ("pull tags", c.get(&format!("/v2/{repo}/tags/list")).status),
        (
            "pull referrers",
            c.get(&format!("/v2/{repo}/referrers/{ABSENT}")).status,
        ),
        (
            "push upload",
            c.req(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                Body::None,
            )
            .status,
        ),
        ("push manifest", bad_manifest.status),
        (
            "delete manifest",
            c.delete(&format!("/v2/{repo}/manifests/{ABSENT}")).status,
        ),
        (
            "delete blob",
            c.delete(&format!("/v2/{repo}/blobs/{ABSENT}")).status,
        ),
    ]
}

/// What each verb answers when allowed.
const ALLOWED: [u16; 9] = [200, 200, 200, 200, 200, 202, 400, 404, 404];

#[test]
fn authorisation_matrix_users_repositories_verbs() {
    let site = Site::new("auth-matrix");
    let root = site.user("root");
    let repos = ["team/app", "public/base", "secret"];
    let configs: Vec<String> = repos
        .iter()
        .enumerate()
        .map(|(i, r)| seed(&root, r, i as u64 + 1).0)
        .collect();
    // (who, [pull, push, delete] per repository), as the rules say.
    let expect: &[(&str, [[bool; 3]; 3])] = &[
        ("anonymous", [[false; 3], [true, false, false], [false; 3]]),
        (
            "alice",
            [[true; 3], [true, false, false], [true, true, false]],
        ),
        (
            "bob",
            [[true, false, false], [true, false, false], [false; 3]],
        ),
        ("ci", [[true, true, false], [true, true, false], [false; 3]]),
        ("root", [[true; 3], [true; 3], [true; 3]]),
    ];
    for (who, rights) in expect {
        for mode in ["basic", "token"] {
            let c = match (*who, mode) {
                ("anonymous", "basic") => site.reg.client(),
                ("anonymous", _) => {
                    let all: Vec<String> =
                        repos.iter().map(|r| format!("repository:{r}:*")).collect();
                    let all: Vec<&str> = all.iter().map(String::as_str).collect();
                    site.reg
                        .client()
                        .with_auth(&format!("Bearer {}", site.token(None, &all)))
                }
                (u, "basic") => site.user(u),
                (u, _) => {
                    let all: Vec<String> = repos
                        .iter()
                        .map(|r| format!("repository:{r}:pull,push,delete"))
                        .collect();
                    let all: Vec<&str> = all.iter().map(String::as_str).collect();
                    site.reg
                        .client()
                        .with_auth(&format!("Bearer {}", site.token(Some(u), &all)))
                }
            };
            for (i, repo) in repos.iter().enumerate() {
                let got = verbs(&c, repo, &configs[i]);
                for (j, (verb, status)) in got.iter().enumerate() {
                    let right = match verb.split(' ').next().unwrap() {
                        "pull" => rights[i][0],
                        "push" => rights[i][1],
                        _ => rights[i][2],
                    };
                    let want = if right {
                        ALLOWED[j]
                    } else if *who == "anonymous" {
                        401
                    } else {
                        403
                    };
                    assert_eq!(*status, want, "{who} ({mode}) {verb} {repo}");
                }
            }
        }
    }
    // Denials carry the spec's codes.
    let r = site
        .user("bob")
        .req("POST", "/v2/team/app/blobs/uploads/", &[], Body::None);
    assert_eq!((r.status, r.code().as_str()), (403, "DENIED"), "{r:?}");
    let r = site.reg.client().get("/v2/team/app/tags/list");
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "UNAUTHORIZED"),
        "{r:?}"
    );
    // Wrong passwords and unknown users are 401, whatever the repository (a few: failed
    // logins are limited per address), as are malformed credentials.
    for c in [
        site.reg.client().as_user("alice", "not-her-password"),
        site.reg.client().as_user("mallory", "whatever-it-is"),
    ] {
        for repo in repos {
            let r = c.get(&format!("/v2/{repo}/tags/list"));
            assert_eq!(
                (r.status, r.code().as_str()),
                (401, "UNAUTHORIZED"),
                "{repo}"
            );
        }
    }
    for c in [
        site.reg.client().with_auth("Basic !!!"),
        site.reg.client().with_auth("Digest x"),
    ] {
        for (i, repo) in repos.iter().enumerate() {
            let got = verbs(&c, repo, &configs[i]);
            assert!(got.iter().all(|(_, s)| *s == 401), "{got:?}");
        }
    }
    // The catalog lists only what the caller may pull.
    let catalog = |c: &Client| -> Vec<String> {
        let r = c.get("/v2/_catalog");
        assert_eq!(r.status, 200, "{r:?}");
        serde_json::from_value(r.json()["repositories"].clone()).unwrap()
    };
    assert_eq!(catalog(&root), ["public/base", "secret", "team/app"]);
    assert_eq!(
        catalog(&site.user("alice")),
        ["public/base", "secret", "team/app"]
    );
    assert_eq!(catalog(&site.user("bob")), ["public/base", "team/app"]);
    let anon = site
        .reg
        .client()
        .with_auth(&format!("Bearer {}", site.token(None, &[])));
    assert_eq!(catalog(&anon), ["public/base"]);
    let r = site.user("bob").get("/v2/_catalog?n=1");
    assert_eq!(r.json()["repositories"], json!(["public/base"]));
    assert!(
        r.header("Link").unwrap().contains("last=public/base"),
        "{r:?}"
    );
    let r = site.reg.client().get("/v2/_catalog");
    assert_eq!(r.status, 401);
    // The admin API is for admins, and for the operator on the admin socket.
    assert_eq!(site.reg.client().get("/admin/stats").status, 401);
    assert_eq!(site.user("bob").get("/admin/stats").status, 403);
    assert_eq!(site.user("root").get("/admin/stats").status, 200);
    let out = site.cli(&["user", "list"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alice\nbob\nroot\nci (htpasswd)\n"
    );
    // GET /v2/ signs clients in (docker login): 401 anonymous, 200 with any valid credential.
    assert_eq!(site.reg.client().get("/v2/").status, 401);
    assert_eq!(site.user("ci").get("/v2/").status, 200);
    assert_eq!(anon.get("/v2/").status, 200);
}

/// The challenge as distribution and Docker Hub write it (recorded shapes):
/// `Bearer realm="…",service="…"[,scope="…"][,error="…"]`.
fn challenge(r: &Resp) -> String {
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.code(), "UNAUTHORIZED");
    assert_eq!(
        r.header("Docker-Distribution-API-Version"),
        Some("registry/2.0")
    );
    r.header("WWW-Authenticate").expect("challenge").to_owned()
}

#[test]
fn token_flow_and_challenge_shapes() {
    let site = Site::new("auth-token");
    let (config, _) = seed(&site.user("root"), "team/app", 1);
    let c = site.reg.client();
    let realm = format!("http://{}/token", site.reg.addr);
    let shape = |scope: &str| format!(r#"Bearer realm="{realm}",service="outpost"{scope}"#);
    assert_eq!(challenge(&c.get("/v2/")), shape(""));
    assert_eq!(
        challenge(&c.get("/v2/team/app/manifests/v1")),
        shape(r#",scope="repository:team/app:pull""#)
    );
    assert_eq!(
        challenge(&c.req("POST", "/v2/team/app/blobs/uploads/", &[], Body::None)),
        shape(r#",scope="repository:team/app:pull,push""#)
    );
    assert_eq!(
        challenge(&c.delete(&format!("/v2/team/app/manifests/{ABSENT}"))),
        shape(r#",scope="repository:team/app:delete""#)
    );
    assert_eq!(
        challenge(&c.get("/v2/_catalog")),
        shape(r#",scope="registry:catalog:*""#)
    );
    // The realm follows the Host the client used; an odd Host is not echoed.
    let with_host = |host: &str| {
        let mut raw = std::net::TcpStream::connect(site.reg.addr).unwrap();
        raw.write_all(
            format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        challenge(&read_response(&mut std::io::BufReader::new(raw), false))
    };
    assert_eq!(
        with_host("registry.plant-a:5000"),
        r#"Bearer realm="http://registry.plant-a:5000/token",service="outpost""#
    );
    assert_eq!(
        with_host("evil\"x"),
        r#"Bearer realm="http://localhost/token",service="outpost""#
    );

    // GET /token with Basic credentials: the granted part of what was asked.
    let r = site.user("bob").get(
        "/token?service=outpost&scope=repository:team/app:pull,push&scope=repository:secret:pull",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let t = r.json();
    assert_eq!(t["token"], t["access_token"]);
    assert_eq!(t["expires_in"], 300);
    assert_eq!(t["scope"], "repository:team/app:pull");
    let issued = t["issued_at"].as_str().unwrap();
    assert!(issued.len() == 20 && issued.ends_with('Z') && issued.as_bytes()[10] == b'T');
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    let bob = c.with_auth(&format!("Bearer {}", t["token"].as_str().unwrap()));
    assert_eq!(bob.get("/v2/team/app/manifests/v1").status, 200);
    assert_eq!(bob.get(&format!("/v2/team/app/blobs/{config}")).status, 200);
    // Bob may not push at all: 403 even though the token lacks the scope.
    let r = bob.req("POST", "/v2/team/app/blobs/uploads/", &[], Body::None);
    assert_eq!((r.status, r.code().as_str()), (403, "DENIED"));
    // Alice may push, but this token says pull only: 401 insufficient_scope, fetch another.
    let alice_pull = site.token(Some("alice"), &["repository:team/app:pull"]);
    let a = c.with_auth(&format!("Bearer {alice_pull}"));
    assert_eq!(a.get("/v2/team/app/tags/list").status, 200);
    assert_eq!(
        challenge(&a.req("POST", "/v2/team/app/blobs/uploads/", &[], Body::None)),
        shape(r#",scope="repository:team/app:pull,push",error="insufficient_scope""#)
    );
    // A token of another repository does not open this one.
    assert_eq!(a.get("/v2/secret/tags/list").status, 401);
    // Tampered, foreign and garbage tokens: invalid_token.
    let mut forged = alice_pull.clone().into_bytes();
    let mid = forged.len() / 3;
    forged[mid] = if forged[mid] == b'A' { b'B' } else { b'A' };
    for bad in [
        String::from_utf8(forged).unwrap(),
        "abc.def".into(),
        "x".repeat(12000),
    ] {
        let r = c
            .with_auth(&format!("Bearer {bad}"))
            .get("/v2/team/app/tags/list");
        assert_eq!(
            challenge(&r),
            shape(r#",scope="repository:team/app:pull",error="invalid_token""#)
        );
    }
    // Wrong credentials at /token: 401, no token.
    let r = c
        .as_user("alice", "wrong-password")
        .get("/token?scope=repository:team/app:pull");
    assert_eq!(r.status, 401);
    assert!(r.json().get("token").is_none());
    // A restart signs every token out (the signing key lives in memory only).
    let old = site.token(Some("alice"), &["repository:team/app:pull"]);
    let mut site = site;
    site.reg.restart();
    let r = site
        .reg
        .client()
        .with_auth(&format!("Bearer {old}"))
        .get("/v2/team/app/tags/list");
    assert!(challenge(&r).ends_with(r#"error="invalid_token""#));

    // POST /token: the OAuth2 password grant containerd tries first.
    let form = format!(
        "grant_type=password&service=outpost&client_id=containerd&username=alice&password={}&scope=repository%3Ateam%2Fapp%3Apull%2Cpush",
        password("alice")
    );
    let r = site.reg.client().req(
        "POST",
        "/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Body::Bytes(form.as_bytes()),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["scope"], "repository:team/app:pull,push");
    let t = r.json()["access_token"].as_str().unwrap().to_owned();
    let r = site.reg.client().with_auth(&format!("Bearer {t}")).req(
        "POST",
        "/v2/team/app/blobs/uploads/",
        &[],
        Body::None,
    );
    assert_eq!(r.status, 202);
    // A refresh-token grant is not offered: containerd then falls back to GET.
    let r = site.reg.client().req(
        "POST",
        "/token",
        &[],
        Body::Bytes(b"grant_type=refresh_token&refresh_token=x&service=outpost"),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "unsupported_grant_type");
    let r = site.reg.client().req(
        "POST",
        "/token",
        &[],
        Body::Bytes(b"grant_type=password&username=alice&password=nope"),
    );
    assert_eq!(r.status, 401);

    // Nothing secret reaches the log: no password, no token, no Authorization header.
    let log = site.reg.log_with("failed login for user \"alice\"");
    for (_, pw) in PASSWORDS {
        assert!(!log.contains(pw), "password in log");
    }
    for tok in [&alice_pull, &old, &t] {
        assert!(!log.contains(tok.as_str()), "token in log");
        assert!(
            !log.contains(tok.split('.').nth(1).unwrap()),
            "token signature in log"
        );
    }
    assert!(!log.to_ascii_lowercase().contains("authorization:"));
}

#[test]
fn mount_needs_pull_on_the_source() {
    let site = Site::new("auth-mount");
    let (config, _) = seed(&site.user("root"), "secret", 1);
    let (team_config, _) = seed(&site.user("root"), "team/app", 2);
    let root = site.user("root");
    for (who, c) in [
        ("ci basic", site.user("ci")),
        (
            "ci token",
            site.reg.client().with_auth(&format!(
                "Bearer {}",
                site.token(
                    Some("ci"),
                    &[
                        "repository:public/app:pull,push",
                        "repository:secret:pull",
                        "repository:team/app:pull"
                    ]
                )
            )),
        ),
    ] {
        // ci may push public/app but not pull secret: a plain upload session, not a mount.
        let r = c.req(
            "POST",
            &format!("/v2/public/app/blobs/uploads/?mount={config}&from=secret"),
            &[],
            Body::None,
        );
        assert_eq!(r.status, 202, "{who}: {r:?}");
        assert!(r.header("Location").unwrap().contains("/blobs/uploads/"));
        assert_eq!(
            root.head(&format!("/v2/public/app/blobs/{config}")).status,
            404,
            "{who}: the blob must not be linked"
        );
        // The same answer as for a digest secret does not hold: nothing leaks.
        let r2 = c.req(
            "POST",
            &format!("/v2/public/app/blobs/uploads/?mount={ABSENT}&from=secret"),
            &[],
            Body::None,
        );
        assert_eq!(r2.status, 202);
        // From a repository ci may pull, the mount is done.
        let r = c.req(
            "POST",
            &format!("/v2/public/app/blobs/uploads/?mount={team_config}&from=team/app"),
            &[],
            Body::None,
        );
        assert_eq!(r.status, 201, "{who}: {r:?}");
        assert_eq!(
            root.head(&format!("/v2/public/app/blobs/{team_config}"))
                .status,
            200
        );
        root.delete(&format!("/v2/public/app/blobs/{team_config}"));
    }
    // Push on the target is needed too: bob may pull team/app but push nowhere.
    let r = site.user("bob").req(
        "POST",
        &format!("/v2/team/other/blobs/uploads/?mount={team_config}&from=team/app"),
        &[],
        Body::None,
    );
    assert_eq!(r.status, 403);
    assert!(site.reg.log_text().contains("(notReadable)"));
}

#[test]
fn failed_logins_are_limited_per_address_and_cached_logins_go_on() {
    let site = Site::new("auth-limit");
    let alice = site.user("alice");
    assert_eq!(alice.get("/v2/").status, 200); // verified now, cached
    let wrong = site.reg.client().as_user("bob", "guess-number-x");
    // 10 failures at once, then one more per 6 s: where hashing is slow (a Pi, or qemu in
    // cross/test.sh) the limit also forgives during the burst itself.
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    while statuses.last() != Some(&429) && statuses.len() < 60 {
        statuses.push(wrong.get("/v2/").status);
    }
    let forgiven = started.elapsed().as_secs() / 6;
    let refused = statuses.len() as u64 - 1;
    assert!(
        (10..=11 + forgiven).contains(&refused),
        "{statuses:?} in {:?}",
        started.elapsed()
    );
    assert!(statuses[..statuses.len() - 1].iter().all(|s| *s == 401));
    assert_eq!(wrong.get("/v2/").status, 429, "{statuses:?}");
    let r = wrong.get("/v2/");
    assert_eq!(r.code(), "TOOMANYREQUESTS");
    let wait: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Even the right password is not checked from this address for now...
    assert_eq!(site.user("bob").get("/v2/").status, 429);
    assert_eq!(
        site.reg
            .client()
            .as_user("bob", password("bob"))
            .get("/token?scope=repository:team/app:pull")
            .status,
        429
    );
    // ...but credentials verified before keep working: a busy CI runner is not locked out.
    assert_eq!(alice.get("/v2/team/x/tags/list").status, 404);
    // And the limit forgives over time: one attempt every 6 s.
    std::thread::sleep(Duration::from_secs(wait));
    assert_eq!(site.user("bob").get("/v2/").status, 200);
}

#[test]
fn users_on_the_command_line_and_in_htpasswd() {
    let mut site = Site::new("auth-users");
    let dir = site.dir.path().to_owned();
    let ok = |args: &[&str], stdin: &str| {
        let out = cli_stdin(&dir, args, stdin);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        text(&out)
    };
    let fails = |args: &[&str], stdin: &str| {
        let out = cli_stdin(&dir, args, stdin);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        text(&out)
    };
    // Online (admin socket): add, use, change, delete.
    assert!(ok(&["user", "add", "dave"], "dave-password-1\n").contains("added user dave"));
    let dave = site.reg.client().as_user("dave", "dave-password-1");
    assert_eq!(dave.get("/v2/team/app/tags/list").status, 404); // authenticated may pull
    assert!(fails(&["user", "add", "dave"], "other-password\n").contains("exists"));
    ok(&["user", "passwd", "dave"], "dave-password-2\n");
    assert_eq!(
        dave.get("/v2/").status,
        401,
        "the cached old password must go"
    );
    let dave2 = site.reg.client().as_user("dave", "dave-password-2");
    assert_eq!(dave2.get("/v2/").status, 200);
    ok(&["user", "del", "dave"], "");
    assert_eq!(dave2.get("/v2/").status, 401);
    assert!(fails(&["user", "del", "dave"], "").contains("no such user"));
    // Bad input is refused with a message that says what to fix.
    assert!(fails(&["user", "add", "anonymous"], "long-enough-pw\n").contains("not a user name"));
    assert!(fails(&["user", "add", "eve"], "short\n").contains("8 to 1024"));
    assert!(fails(&["user", "add", "eve", "--password", "x"], "").contains("--password"));
    assert!(fails(&["user", "frobnicate"], "").contains("there is no command user"));
    // The htpasswd file is re-read when it changes.
    let htpasswd = site.dir.path().join("htpasswd");
    let ci = std::fs::read_to_string(&htpasswd).unwrap();
    let erin = bcrypt::hash("erin-password-5", 4).unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // a new mtime
    std::fs::write(&htpasswd, format!("{ci}erin:{erin}\n")).unwrap();
    let erin = site.reg.client().as_user("erin", "erin-password-5");
    assert_eq!(erin.get("/v2/").status, 200);
    assert_eq!(site.user("ci").get("/v2/").status, 200);
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&htpasswd, ci).unwrap();
    assert_eq!(erin.get("/v2/").status, 401, "removed from htpasswd");
    // Offline: the same commands work on the store of a stopped registry.
    assert!(site.reg.terminate().success());
    ok(&["user", "add", "frank"], "frank-password\n");
    let list = ok(&["user", "list"], "");
    assert!(
        list.contains("frank\n") && list.contains("ci (htpasswd)"),
        "{list}"
    );
    let cfg = site.dir.path().join("outpost.json");
    site.reg = Registry::start_with(
        &site.dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    assert_eq!(
        site.reg
            .client()
            .as_user("frank", "frank-password")
            .get("/v2/")
            .status,
        200
    );
}

#[test]
fn configuration_mistakes_are_refused_at_start_with_what_to_fix() {
    let dir = TempDir::new("auth-config");
    let start = |config: serde_json::Value| -> String {
        let cfg = dir.path().join("bad.json");
        std::fs::write(&cfg, config.to_string()).unwrap();
        let mut child = common::outpost()
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_timeout(&mut child, Duration::from_secs(20)).expect("exits");
        assert!(!status.success());
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        err
    };
    let pem = |name: &str, hosts: &[&str]| -> (PathBuf, PathBuf) {
        let out_dir = dir.path().join(name);
        let mut args = vec!["tls", "self-signed", "--out", out_dir.to_str().unwrap()];
        for h in hosts {
            args.extend(["--host", h]);
        }
        let out = common::outpost().args(&args).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        (out_dir.join("outpost.crt"), out_dir.join("outpost.key"))
    };
    let (cert_a, key_a) = pem("a", &["127.0.0.1"]);
    let (_, key_b) = pem("b", &["localhost"]);
    let e = start(json!({"tls": {"certFile": cert_a, "keyFile": key_b}}));
    assert!(
        e.contains("is not the private key of the certificate"),
        "{e}"
    );
    let e = start(json!({"tls": {"certFile": dir.path().join("nope.crt"), "keyFile": key_a}}));
    assert!(e.contains("tls.certFile: cannot read"), "{e}");
    let e = start(json!({"tls": {"certFile": key_a, "keyFile": key_a}}));
    assert!(e.contains("no CERTIFICATE"), "{e}");
    let e = start(json!({"tls": {"certFile": cert_a}}));
    assert!(e.contains("keyFile"), "{e}");
    let e = start(json!({"access": [{"repositories": "a/*", "pull": ["every one"]}]}));
    assert!(
        e.contains("access rule 1") && e.contains("neither anonymous"),
        "{e}"
    );
    let e = start(json!({"access": [{"repositories": "a/*", "write": ["x"]}]}));
    assert!(e.contains("unknown field"), "{e}");
    let e = start(json!({"auth": {"htpasswd": dir.path().join("missing")}}));
    assert!(e.contains("auth.htpasswd: cannot read"), "{e}");
    std::fs::write(dir.path().join("md5"), "old:$apr1$x$y\n").unwrap();
    let e = start(json!({"auth": {"htpasswd": dir.path().join("md5")}}));
    assert!(e.contains("line 1") && e.contains("htpasswd -B"), "{e}");
    let e = start(json!({"auth": {"tokenTtl": "5s"}}));
    assert!(e.contains("auth.tokenTtl"), "{e}");
    // The self-signed command refuses to overwrite, and to name nothing.
    let out = common::outpost()
        .args(["tls", "self-signed", "--host", "x", "--out"])
        .arg(dir.path().join("a"))
        .output()
        .unwrap();
    assert!(
        !out.status.success() && text(&out).contains("exists"),
        "{}",
        text(&out)
    );
    let out = common::outpost()
        .args(["tls", "self-signed"])
        .output()
        .unwrap();
    assert!(text(&out).contains("needs --host"), "{}", text(&out));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_a).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// The status of `GET path` with Basic `user:pw`, sent from source address `from`
/// (loopback has all of 127/8: each /24 counts as another client network).
fn from_address(site: &Site, from: &str, user: &str, pw: &str, path: &str) -> u16 {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--interface",
            from,
        ])
        .args(["-u", &format!("{user}:{pw}")])
        .arg(format!("http://{}{path}", site.reg.addr))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn an_address_over_the_limit_learns_nothing_even_of_a_recently_used_password() {
    let site = Site::new("auth-limit-cache");
    let bob = password("bob");
    // bob signs in from 127.0.0.3: his password is now in the verified cache.
    assert_eq!(from_address(&site, "127.0.0.3", "bob", bob, "/v2/"), 200);
    // Then someone at 127.0.0.3 guesses at bob's password.
    let emulated = std::env::var("OUTPOST_RUNNER").is_ok_and(|r| !r.is_empty());
    let mut statuses = Vec::new();
    for i in 0..60 {
        let s = from_address(&site, "127.0.0.3", "bob", &format!("guess-{i}-xx"), "/v2/");
        statuses.push(s);
        if s == 429 {
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    // 10 failures, and what was forgiven meanwhile (hashing under qemu is slow).
    assert!(emulated || statuses.len() <= 13, "{statuses:?}");
    // Over the limit, the right password (verified a moment ago, so cached) answers exactly
    // as a wrong one.
    assert_eq!(from_address(&site, "127.0.0.3", "bob", bob, "/v2/"), 429);
    assert_eq!(
        from_address(&site, "127.0.0.3", "bob", "wrong-again-1", "/v2/"),
        429
    );
    // Another user from that address, and bob from another address, are not limited.
    assert_eq!(
        from_address(&site, "127.0.0.3", "alice", password("alice"), "/v2/"),
        200
    );
    assert_eq!(from_address(&site, "127.0.0.4", "bob", bob, "/v2/"), 200);
    // Many users guessed from two addresses of one /24: the network's own limit stops the
    // spray, for every address and user of that network, even with a right password (under
    // qemu a guess takes longer than the limit's refill: nothing to show there).
    if emulated {
        return;
    }
    let mut sprayed = Vec::new();
    for i in 0..70 {
        let from = if i % 2 == 0 { "127.0.2.1" } else { "127.0.2.2" };
        let s = from_address(&site, from, &format!("u{i}"), "nope-nope-1", "/v2/");
        sprayed.push(s);
        if s == 429 {
            break;
        }
    }
    assert_eq!(sprayed.last(), Some(&429), "{sprayed:?}");
    assert!((28..=50).contains(&sprayed.len()), "{}", sprayed.len());
    assert_eq!(from_address(&site, "127.0.2.9", "bob", bob, "/v2/"), 429);
    assert_eq!(from_address(&site, "127.0.3.1", "bob", bob, "/v2/"), 200);
}

#[test]
fn guesses_sent_at_once_cannot_pass_the_limit_together() {
    let site = Site::new("auth-limit-burst");
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let guesses: Vec<_> = (0..40)
            .map(|i| {
                let site = &site;
                s.spawn(move || {
                    let pw = if i == 39 {
                        password("bob").to_owned()
                    } else {
                        format!("guess-{i}-xx")
                    };
                    from_address(site, "127.0.5.1", "bob", &pw, "/v2/")
                })
            })
            .collect();
        guesses.into_iter().map(|g| g.join().unwrap()).collect()
    });
    let checked = statuses.iter().filter(|s| **s != 429).count();
    assert!(checked <= 11, "{checked} checked: {statuses:?}");
    assert!(
        statuses.iter().all(|s| matches!(s, 200 | 401 | 429)),
        "{statuses:?}"
    );
}

#[test]
fn a_failed_login_takes_as_long_for_every_kind_of_user() {
    if std::env::var("OUTPOST_RUNNER").is_ok_and(|r| !r.is_empty()) {
        eprintln!("SKIPPED: timings under emulation say nothing about the real machine");
        return;
    }
    let site = Site::new("auth-timing");
    let c = site.reg.client();
    // ci: htpasswd, bcrypt cost 5 (fast); alice: the store (PBKDF2); nobody: unknown.
    let kinds = ["ci", "alice", "nobody-here"];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    for round in 0..7 {
        for (k, user) in kinds.iter().enumerate() {
            let wrong = c.as_user(user, &format!("wrong-password-{round}"));
            let t = std::time::Instant::now();
            assert_eq!(wrong.get("/v2/").status, 401);
            times[k].push(t.elapsed().as_secs_f64());
        }
    }
    let medians: Vec<f64> = times
        .iter_mut()
        .map(|t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect();
    let (lo, hi) = medians
        .iter()
        .fold((f64::MAX, 0f64), |(l, h), m| (l.min(*m), h.max(*m)));
    eprintln!("median failure times {kinds:?}: {medians:?} s");
    assert!(
        hi <= lo * 1.10,
        "median failure times {kinds:?}: {medians:?} s"
    );
    // A right password is not slowed.
    assert_eq!(site.user("ci").get("/v2/").status, 200);
}

#[test]
fn an_admin_token_opens_the_admin_api_only_when_issued_for_it() {
    let site = Site::new("auth-admin-scope");
    let c = site.reg.client();
    for scopes in [&["repository:public/p:pull"][..], &[]] {
        let narrow = c.with_auth(&format!("Bearer {}", site.token(Some("root"), scopes)));
        let r = narrow.get("/admin/users");
        assert_eq!(r.status, 401, "{scopes:?}: {r:?}");
        let challenge = r.header("WWW-Authenticate").unwrap();
        assert!(
            challenge.contains("scope=\"registry:admin:*\"")
                && challenge.contains("insufficient_scope"),
            "{challenge}"
        );
        let add = narrow.req(
            "POST",
            "/admin/users/mallory",
            &[],
            Body::Bytes(b"{\"password\":\"mallory-pw-1\"}"),
        );
        assert_eq!(add.status, 401, "{add:?}");
        assert_eq!(narrow.delete("/admin/repositories/public/p").status, 401);
    }
    let list = site.cli(&["user", "list"], "");
    assert!(!text(&list).contains("mallory"), "{}", text(&list));
    // Asked for the admin API, an admin's token opens it; anyone else's does not.
    let admin = site.token(Some("root"), &["registry:admin:*"]);
    let r = c.with_auth(&format!("Bearer {admin}")).get("/admin/users");
    assert_eq!(r.status, 200, "{r:?}");
    let alice = site.token(Some("alice"), &["registry:admin:*"]);
    assert_eq!(
        c.with_auth(&format!("Bearer {alice}"))
            .get("/admin/users")
            .status,
        403
    );
    // Basic credentials of an admin still open it.
    assert_eq!(site.user("root").get("/admin/users").status, 200);
}

#[test]
fn a_token_ends_with_its_user_or_its_password() {
    let site = Site::new("auth-token-user");
    let c = site.reg.client();
    let ok = |args: &[&str], stdin: &str| {
        let out = site.cli(args, stdin);
        assert!(out.status.success(), "{}", text(&out));
    };
    ok(&["user", "add", "dave"], "dave-password-1\n");
    ok(&["user", "add", "erin"], "erin-password-1\n");
    let token = |user: &str, pw: &str| {
        let r = c
            .as_user(user, pw)
            .get("/token?service=outpost&scope=repository:team/app:pull");
        assert_eq!(r.status, 200, "{r:?}");
        c.with_auth(&format!("Bearer {}", r.json()["token"].as_str().unwrap()))
    };
    let dave = token("dave", "dave-password-1");
    let erin = token("erin", "erin-password-1");
    for t in [&dave, &erin] {
        assert_eq!(t.get("/v2/team/app/tags/list").status, 404, "valid token");
    }
    ok(&["user", "del", "dave"], "");
    ok(&["user", "passwd", "erin"], "erin-password-2\n");
    for t in [&dave, &erin] {
        let r = t.get("/v2/team/app/tags/list");
        assert_eq!(r.status, 401, "{r:?}");
        assert!(r
            .header("WWW-Authenticate")
            .unwrap()
            .contains("invalid_token"));
    }
    // erin's new password gets a token that works.
    let erin = token("erin", "erin-password-2");
    assert_eq!(erin.get("/v2/team/app/tags/list").status, 404);
    // A token of an htpasswd user ends when the user leaves the file.
    let ci = token("ci", password("ci"));
    assert_eq!(ci.get("/v2/team/app/tags/list").status, 404);
    let htpasswd = site.dir.path().join("htpasswd");
    std::thread::sleep(Duration::from_millis(1100)); // a new modification time
    std::fs::write(&htpasswd, "# nobody\n").unwrap();
    assert_eq!(ci.get("/v2/team/app/tags/list").status, 401);
}
