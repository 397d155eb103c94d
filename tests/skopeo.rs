//! A real client: skopeo pushes OCI layouts (single image and a multi-arch index) to the
//! registry and pulls them back; every digest must survive the round trip.

mod common;
use common::oci::*;
use common::*;
use std::path::Path;
use std::process::Command;

/// Every blob file of a layout hashes to its name; returns the names.
fn verified_blobs(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let name = format!("sha256:{}", e.file_name().to_str().unwrap());
        assert_eq!(
            sha256(&std::fs::read(e.path()).unwrap()),
            name,
            "pulled blob corrupted"
        );
        names.push(name);
    }
    names.sort();
    names
}

fn tagged_digest(dir: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_owned()
}

/// Pushes layout `src` to `reference` (repo:tag) with skopeo, checks the registry serves the
/// top manifest as `top`, pulls it back into `dst`, and checks that the top digest and every
/// blob survived. `all` copies every image of an index.
fn round_trip(c: &Client, src: &Path, dst: &Path, reference: &str, top: &str, all: bool) {
    let (repo, tag) = reference.split_once(':').unwrap();
    let host = c.addr.to_string();
    let pushed = verified_blobs(src);
    let all = if all { &["--all"][..] } else { &[][..] };
    let remote = format!("docker://{host}/{reference}");
    let copy = |from: &str, to: &str, tls: &str| {
        let mut args = vec!["copy", "--preserve-digests", tls];
        args.extend_from_slice(all);
        args.extend_from_slice(&[from, to]);
        skopeo(&args);
    };
    copy(
        &format!("oci:{}:{tag}", src.display()),
        &remote,
        "--dest-tls-verify=false",
    );
    let g = c.get(&format!("/v2/{repo}/manifests/{tag}"));
    assert_eq!(g.header("Docker-Content-Digest"), Some(top));
    copy(
        &remote,
        &format!("oci:{}:{tag}", dst.display()),
        "--src-tls-verify=false",
    );
    assert_eq!(tagged_digest(dst), top);
    assert_eq!(
        verified_blobs(dst),
        pushed,
        "pulled {reference} differs from pushed"
    );
}

#[test]
fn skopeo_push_and_pull_an_image_and_a_multi_arch_index() {
    let tmp = TempDir::new("skopeo");
    let reg = Registry::start(&tmp.path().join("data"));
    let c = reg.client();

    // A multi-layer image.
    let src = new_layout(tmp.path(), "src");
    let layers = vec![bytes(1, 2 << 20), bytes(2, 300 << 10), bytes(3, 10 << 10)];
    let m = image(&src, "amd64", &layers);
    layout(&src, OCI_MANIFEST, &m, "v1");
    round_trip(
        &c,
        &src,
        &tmp.path().join("dst"),
        "edge/app:v1",
        &m.0,
        false,
    );

    // A multi-arch index whose images share a layer.
    let msrc = new_layout(tmp.path(), "msrc");
    let shared = bytes(4, 1 << 20);
    let amd = image(&msrc, "amd64", &[shared.clone(), bytes(5, 200 << 10)]);
    let arm = image(&msrc, "arm64", &[shared, bytes(6, 150 << 10)]);
    let idx = index(&msrc, &amd, &arm, "multi");
    round_trip(
        &c,
        &msrc,
        &tmp.path().join("mdst"),
        "edge/multi:multi",
        &idx.0,
        true,
    );
    let g = c.get("/v2/edge/multi/manifests/multi");
    assert_eq!(g.header("Content-Type"), Some(OCI_INDEX));
    assert!(!reg.log_text().contains(" 500 "), "{}", reg.log_text());
}

#[test]
fn skopeo_round_trips_through_encrypted_repositories() {
    let tmp = TempDir::new("skopeo-enc");
    let cfg = encryption_config(
        tmp.path(),
        serde_json::json!([
            {"repositories": "aes/*", "key": "aes", "algorithm": "aes-256-gcm"},
            {"repositories": "cha/*", "key": "cha", "algorithm": "chacha20-poly1305"},
        ]),
    );
    let reg = Registry::start_with(
        &tmp.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let c = reg.client();
    let msrc = new_layout(tmp.path(), "msrc");
    let amd = image(&msrc, "amd64", &[bytes(7, 1 << 20), bytes(8, 200 << 10)]);
    let arm = image(&msrc, "arm64", &[bytes(9, 700 << 10)]);
    let idx = index(&msrc, &amd, &arm, "v1");
    for repo in ["aes/app", "cha/app"] {
        let dst = tmp.path().join(repo.replace('/', "-"));
        round_trip(&c, &msrc, &dst, &format!("{repo}:v1"), &idx.0, true);
    }
    let keys = c.get("/admin/keys").json();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2, "{keys}");
    assert!(!reg.log_text().contains(" 500 "), "{}", reg.log_text());
}

/// skopeo with its own blob-info cache under `cache` (as root, the cache would otherwise be
/// the machine-wide one: `_CONTAINERS_ROOTLESS_UID` makes it use `XDG_DATA_HOME`), with
/// `--debug`; returns the debug log.
fn skopeo_cached(cache: &Path, args: &[&str]) -> String {
    let uid = match unsafe_getuid() {
        0 => 65534,
        u => u,
    };
    let out = Command::new("skopeo")
        .env("_CONTAINERS_ROOTLESS_UID", uid.to_string())
        .env("XDG_DATA_HOME", cache)
        .args(["--insecure-policy", "--debug"])
        .args(args)
        .output()
        .expect("skopeo is required for this test: run ./test.sh, which installs it");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "skopeo {args:?} failed:\n{log}");
    log
}

fn unsafe_getuid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Blob bytes the registry reports, and the disk space its data directory takes (allocated
/// blocks, as `du` counts: redb extends its file ahead of use without writing it).
fn stored(c: &Client, data: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let s = c.get("/admin/stats").json()["store"].clone();
    let alloc = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum();
    (s["blobBytes"].as_u64().unwrap(), alloc)
}

#[test]
fn skopeo_fleet_push_mounts_base_layers_and_stores_unique_bytes_only() {
    let tmp = TempDir::new("skopeo-fleet");
    // On the target directory's disk, like the flash test (file growth is what is judged).
    let disk = TempDir::on_disk("fleet");
    let data = disk.path().to_owned();
    let reg = Registry::start(&data);
    let c = reg.client();
    let host = c.addr.to_string();
    let base: Vec<Vec<u8>> = (0..3).map(|i| bytes(100 + i, 2 << 20)).collect();
    let services = ["service-a", "service-b", "service-c", "service-d"];
    let mut layouts = Vec::new();
    for (i, name) in services.iter().enumerate() {
        let dir = new_layout(tmp.path(), name);
        let mut layers = base.clone();
        layers.push(bytes(200 + i as u64, 1 << 20));
        let m = image(&dir, "arm64", &layers);
        layout(&dir, OCI_MANIFEST, &m, "v1");
        layouts.push(dir);
    }
    let unique = |dir: &Path| -> u64 {
        // Everything in the layout but the base layers (unique layer, config, manifest).
        let base_digests: Vec<String> = base.iter().map(|b| sha256(b)).collect();
        std::fs::read_dir(dir.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| {
                !base_digests.contains(&format!("sha256:{}", e.file_name().to_str().unwrap()))
            })
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };
    let push = |cache: &Path, dir: &Path, repo: &str| {
        skopeo_cached(
            cache,
            &[
                "copy",
                // Else skopeo gzips the plain tar layers on the way (other digests).
                "--preserve-digests",
                "--dest-tls-verify=false",
                &format!("oci:{}:v1", dir.display()),
                &format!("docker://{host}/{repo}:v1"),
            ],
        )
    };

    // One client cache for the whole fleet: later services mount the base layers.
    let cache = tmp.path().join("cache");
    push(&cache, &layouts[0], services[0]);
    for (i, name) in services.iter().enumerate().skip(1) {
        let (bytes_before, file_before) = stored(&c, &data);
        let log = push(&cache, &layouts[i], name);
        let mounted = log.matches("... mount OK").count();
        assert_eq!(
            mounted,
            base.len(),
            "{name}: base layers not mounted:\n{log}"
        );
        assert!(!log.contains("started an upload instead"), "{log}");
        let (bytes_after, file_after) = stored(&c, &data);
        // Manifests are not blobs: the unique layer and config are what the store gained.
        let manifest_len = std::fs::metadata(
            layouts[i]
                .join("blobs/sha256")
                .join(&tagged_digest(&layouts[i])[7..]),
        )
        .unwrap()
        .len();
        assert_eq!(
            bytes_after - bytes_before,
            unique(&layouts[i]) - manifest_len
        );
        let grown = file_after - file_before;
        eprintln!(
            "{name}: {mounted} layers mounted, store +{} blob bytes, disk +{grown}",
            bytes_after - bytes_before
        );
        assert!(
            grown <= unique(&layouts[i]) + (256 << 10),
            "{name}: file grew {grown} for {} unique bytes",
            unique(&layouts[i])
        );
    }

    // Cold clients (empty caches) pushing the fleet again to new repositories: every byte
    // is sent, and the store keeps what it has.
    let (bytes_before, file_before) = stored(&c, &data);
    let mut pushed = 0u64;
    for (i, name) in services.iter().enumerate() {
        let cold_cache = tmp.path().join(format!("cold-{i}"));
        push(&cold_cache, &layouts[i], &format!("{name}-cold"));
        pushed += verified_blobs(&layouts[i])
            .iter()
            .map(|d| {
                std::fs::metadata(layouts[i].join("blobs/sha256").join(&d[7..]))
                    .unwrap()
                    .len()
            })
            .sum::<u64>();
    }
    let (bytes_after, file_after) = stored(&c, &data);
    assert_eq!(
        bytes_after, bytes_before,
        "cold re-push stored content twice"
    );
    let grown = file_after - file_before;
    eprintln!("cold re-push of {pushed} bytes: disk +{grown}");
    assert!(
        grown * 100 < pushed,
        "cold re-push of {pushed} bytes grew the store by {grown}"
    );
    let stats = c.get("/admin/stats").json();
    assert_eq!(
        stats["mounts"]["done"],
        (base.len() * (services.len() - 1)) as u64
    );
}

/// curl over HTTPS trusting `cert`: (exit status success, HTTP status, headers and body).
fn curl(cert: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--cacert"])
        .arg(cert)
        .args(args)
        .output()
        .expect("curl is required");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// skopeo that is expected to fail: its error output.
fn skopeo_fails(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .expect("skopeo is required for this test: run ./test.sh, which installs it");
    assert!(!out.status.success(), "skopeo {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn skopeo_pushes_and_pulls_with_credentials_over_https_through_the_token_flow() {
    let tmp = TempDir::new("skopeo-tls");
    let t = tmp.path();
    let run = |args: &[&str], stdin: &str| {
        let out = outpost_stdin(args, stdin);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {text}{err}");
        text
    };
    let tls = t.join("tls");
    let printed = run(
        &[
            "tls",
            "self-signed",
            "--host",
            "127.0.0.1",
            "--host",
            "localhost",
            "--out",
            tls.to_str().unwrap(),
        ],
        "",
    );
    assert!(
        printed.contains("/etc/docker/certs.d/127.0.0.1:5000/ca.crt"),
        "{printed}"
    );
    assert!(printed.contains("/etc/containerd/certs.d/"), "{printed}");
    let cert = tls.join("outpost.crt");
    let certs = t.join("certs.d");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&cert, certs.join("ca.crt")).unwrap();
    let cfg = t.join("outpost.json");
    std::fs::write(
        &cfg,
        serde_json::json!({
            "listen": "127.0.0.1:0", // no command finds a registry by address
            "dataDir": t.join("data"),
            "tls": {"certFile": cert, "keyFile": tls.join("outpost.key")},
            "access": [{"repositories": "team/*", "pull": ["authenticated"], "push": ["alice"]}],
        })
        .to_string(),
    )
    .unwrap();
    let config = ["--config", cfg.to_str().unwrap()];
    run(
        &[&["user", "add", "alice"][..], &config].concat(),
        "alice-password\n",
    );
    run(
        &[&["user", "add", "bob"][..], &config].concat(),
        "bob-password\n",
    );
    let reg = Registry::start_with(&t.join("data"), &config);
    let host = reg.addr.to_string();
    let base = format!("https://{host}");

    // OpenSSL (curl) accepts the certificate; the challenge names the HTTPS token endpoint.
    let (ok, out) = curl(&cert, &[&format!("{base}/v2/")]);
    assert!(ok, "{out}");
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert!(
        out.contains(&format!(
            r#"Bearer realm="https://{host}/token",service="outpost""#
        )),
        "{out}"
    );
    for version in [
        ["--tlsv1.2", "--tls-max", "1.2"],
        ["--tlsv1.3", "--tls-max", "1.3"],
    ] {
        let (ok, out) = curl(&cert, &[&version[..], &[&format!("{base}/v2/")]].concat());
        assert!(ok && out.starts_with("HTTP/1.1 401"), "{version:?}: {out}");
    }
    // Plain HTTP on the TLS port gets no answer.
    let (ok, out) = curl(&cert, &[&format!("http://{host}/v2/")]);
    assert!(!ok, "{out}");

    let src = new_layout(t, "src");
    let top = image(&src, "arm64", &[bytes(31, 600 << 10), bytes(32, 90 << 10)]);
    layout(&src, OCI_MANIFEST, &top, "v1");
    let pushed = verified_blobs(&src);
    let cert_dir = certs.to_str().unwrap();
    let remote = |tag: &str| format!("docker://{host}/team/app:{tag}");
    let oci = |dir: &Path, tag: &str| format!("oci:{}:{tag}", dir.display());

    // A wrong password: refused, and nothing of the image is stored.
    let err = skopeo_fails(&[
        "copy",
        "--dest-creds",
        "alice:not-the-password",
        "--dest-cert-dir",
        cert_dir,
        &oci(&src, "v1"),
        &remote("v1"),
    ]);
    assert!(
        err.to_lowercase().contains("unauthorized") || err.contains("401"),
        "{err}"
    );
    let (_, out) = curl(
        &cert,
        &["-u", "alice:alice-password", &format!("{base}/v2/_catalog")],
    );
    assert!(out.contains(r#"{"repositories":[]}"#), "{out}");
    // Bob may pull but not push.
    let err = skopeo_fails(&[
        "copy",
        "--dest-creds",
        "bob:bob-password",
        "--dest-cert-dir",
        cert_dir,
        &oci(&src, "v1"),
        &remote("v1"),
    ]);
    assert!(
        err.to_lowercase().contains("denied")
            || err.contains("403")
            || err.to_lowercase().contains("unauthorized"),
        "{err}"
    );
    // Without trusting the certificate, skopeo refuses the connection.
    let err = skopeo_fails(&[
        "copy",
        "--dest-creds",
        "alice:alice-password",
        &oci(&src, "v1"),
        &remote("v1"),
    ]);
    assert!(err.contains("certificate"), "{err}");

    // Alice pushes, Bob pulls: token flow over HTTPS, every digest intact.
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-creds",
        "alice:alice-password",
        "--dest-cert-dir",
        cert_dir,
        &oci(&src, "v1"),
        &remote("v1"),
    ]);
    let dst = t.join("dst");
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-creds",
        "bob:bob-password",
        "--src-cert-dir",
        cert_dir,
        &remote("v1"),
        &oci(&dst, "v1"),
    ]);
    assert_eq!(tagged_digest(&dst), top.0);
    assert_eq!(verified_blobs(&dst), pushed);
    // A failed push with a wrong password after that leaves the repository as it was.
    skopeo_fails(&[
        "copy",
        "--dest-creds",
        "alice:wrong-again",
        "--dest-cert-dir",
        cert_dir,
        &oci(&src, "v1"),
        &remote("v2"),
    ]);
    let (_, out) = curl(
        &cert,
        &[
            "-u",
            "bob:bob-password",
            &format!("{base}/v2/team/app/tags/list"),
        ],
    );
    assert!(out.contains(r#""tags":["v1"]"#), "{out}");
    // Token requests went through /token, never with a password in the log.
    let log = reg.log_text();
    assert!(log.contains("GET /token?"), "{log}");
    assert!(!log.contains("alice-password") && !log.contains("bob-password"));
}

/// `immutableTags`: skopeo cannot move an immutable tag to another image (and is told which
/// rule refused it), may push the identical image again, and may move the excluded tag.
#[test]
fn skopeo_cannot_move_an_immutable_tag_but_may_move_the_excluded_one() {
    let tmp = TempDir::new("skopeo-immutable");
    let cfg = tmp.path().join("outpost.json");
    std::fs::write(
        &cfg,
        r#"{"immutableTags":[{"repositories":"fleet/*","except":["latest"]}]}"#,
    )
    .unwrap();
    let reg = Registry::start_with(
        &tmp.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let c = reg.client();
    let host = c.addr.to_string();
    let one = |name: &str, seed: u64| {
        let dir = new_layout(tmp.path(), name);
        let m = image(&dir, "amd64", &[bytes(seed, 50 << 10)]);
        layout(&dir, OCI_MANIFEST, &m, "x");
        (dir, m.0)
    };
    let (a, a_digest) = one("a", 21);
    let (b, b_digest) = one("b", 22);
    let args = |src: &Path, to: &str| {
        vec![
            "copy".to_owned(),
            "--preserve-digests".to_owned(),
            "--dest-tls-verify=false".to_owned(),
            format!("oci:{}:x", src.display()),
            format!("docker://{host}/{to}"),
        ]
    };
    let push = |src: &Path, to: &str| {
        let a = args(src, to);
        skopeo(&a.iter().map(String::as_str).collect::<Vec<_>>());
    };
    let digest_of = |r: &str| {
        let (repo, tag) = r.split_once(':').unwrap();
        c.head(&format!("/v2/{repo}/manifests/{tag}"))
            .header("Docker-Content-Digest")
            .map(str::to_owned)
    };
    push(&a, "fleet/app:v1");
    let refused = args(&b, "fleet/app:v1");
    let err = skopeo_fails(&refused.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        err.contains("tag v1 is immutable (immutableTags rule 1 for fleet/*)"),
        "{err}"
    );
    assert_eq!(digest_of("fleet/app:v1"), Some(a_digest.clone()));
    // The identical image again: accepted.
    push(&a, "fleet/app:v1");
    // The exception, and repositories no rule names, stay mutable.
    push(&a, "fleet/app:latest");
    push(&b, "fleet/app:latest");
    assert_eq!(digest_of("fleet/app:latest"), Some(b_digest.clone()));
    push(&a, "other/app:v1");
    push(&b, "other/app:v1");
    assert_eq!(digest_of("other/app:v1"), Some(b_digest));
    // Deleting an immutable tag takes the delete right (open here) and is logged.
    assert_eq!(c.delete("/v2/fleet/app/manifests/v1").status, 202);
    reg.log_with("deleted immutable tag fleet/app:v1");
}
