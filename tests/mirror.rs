//! Mirroring through the real binary: export/import bundles (air gap), archives made by
//! skopeo and in docker save format, sync from Outpost and from distribution, and the
//! pull-through cache, with skopeo as the client.

mod common;
use common::oci::*;
use common::*;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Runs `outpost ARGS`, asserting success; returns stdout + stderr.
fn ok(args: &[&str]) -> String {
    let o = outpost().args(args).output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "outpost {args:?} failed:\n{t}");
    t
}

fn fails(args: &[&str]) -> String {
    let o: Output = outpost().args(args).output().unwrap();
    let t = text(&o);
    assert!(
        !o.status.success(),
        "outpost {args:?} should have failed:\n{t}"
    );
    t
}

/// A two-platform index (amd64, arm64) in a fresh layout under `root/name`, with layers
/// from `seed`; returns (layout dir, index digest, amd64 manifest digest, arm64 manifest
/// digest, amd64 layer digests).
struct MultiArch {
    dir: PathBuf,
    amd: String,
    arm: String,
    amd_layers: Vec<String>,
}

fn multi_arch(root: &Path, name: &str, seed: u64, tag: &str) -> MultiArch {
    let dir = new_layout(root, name);
    let amd_layers = vec![bytes(seed, 300_000), bytes(seed + 1, 50_000)];
    let arm_layers = vec![bytes(seed + 2, 280_000), bytes(seed + 3, 40_000)];
    let amd = image(&dir, "amd64", &amd_layers);
    let arm = image(&dir, "arm64", &arm_layers);
    index(&dir, &amd, &arm, tag);
    MultiArch {
        dir,
        amd: amd.0,
        arm: arm.0,
        amd_layers: amd_layers.iter().map(|l| sha256(l)).collect(),
    }
}

fn push(layout: &Path, tag: &str, to: &str) {
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{to}"),
    ]);
}

fn pull(from: &str, dir: &Path, tag: &str) {
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        &format!("docker://{from}"),
        &format!("oci:{}:{tag}", dir.display()),
    ]);
}

/// The manifests listed by the index a pulled layout's tag points at.
fn index_entries(dir: &Path) -> Vec<serde_json::Value> {
    let top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let d = top["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(&d[7..])).unwrap())
            .unwrap();
    idx["manifests"].as_array().unwrap().clone()
}

#[test]
fn air_gap_export_of_one_platform_imports_into_a_fresh_registry() {
    let tmp = TempDir::new("airgap");
    let a = Registry::start(&tmp.path().join("a"));
    let img = multi_arch(tmp.path(), "src", 700, "v1");
    push(&img.dir, "v1", &format!("{}/plant/app:v1", a.addr));

    // Export through the running A (HTTP), arm64 only.
    let bundle = tmp.path().join("bundle.tar");
    let server = format!("http://{}", a.addr);
    let out = ok(&[
        "export",
        "plant/app:v1",
        "--platform",
        "linux/arm64",
        "-o",
        bundle.to_str().unwrap(),
        "--server",
        &server,
    ]);
    assert!(out.contains("exported plant/app:v1"), "{out}");
    let unknown = fails(&[
        "export",
        "plant/app:v1",
        "--platform",
        "linux/s390x",
        "-o",
        tmp.path().join("none.tar").to_str().unwrap(),
        "--server",
        &server,
    ]);
    assert!(
        unknown.contains("no manifest matches platform linux/s390x"),
        "{unknown}"
    );
    assert!(!tmp.path().join("none.tar").exists());

    // Import into a fresh, stopped B (its store is created), then again: nothing rewritten.
    let b_data = tmp.path().join("b");
    let b_dir = b_data.to_str().unwrap();
    let bundle_s = bundle.to_str().unwrap();
    let first = ok(&["import", bundle_s, "--data-dir", b_dir]);
    assert!(first.contains("imported plant/app:v1"), "{first}");
    let again = ok(&["import", bundle_s, "--data-dir", b_dir]);
    assert!(
        again.contains("0 blob(s) stored, 3 already present"),
        "{again}"
    );

    let b = Registry::start(&b_data);
    let c = b.client();
    let pulled = tmp.path().join("pulled");
    pull(&format!("{}/plant/app:v1", b.addr), &pulled, "v1");
    let entries = index_entries(&pulled);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["digest"], img.arm.as_str());
    assert_eq!(entries[0]["platform"]["architecture"], "arm64");
    // Every pulled blob hashes to its name (skopeo checked them too); arm64 bytes identical.
    let arm = c.get(&format!("/v2/plant/app/manifests/{}", img.arm));
    assert_eq!(arm.status, 200);
    assert_eq!(arm.header("Docker-Content-Digest"), Some(img.arm.as_str()));
    for l in &img.amd_layers {
        assert_eq!(c.head(&format!("/v2/plant/app/blobs/{l}")).status, 404);
    }
    assert_eq!(
        c.head(&format!("/v2/plant/app/manifests/{}", img.amd))
            .status,
        404
    );
    let (blobs, _) = c.stored_blobs();
    assert_eq!(blobs, 3, "B holds the arm64 config and two layers only");
}

/// A `docker save` archive (pre-OCI format) of one generated image, as a tar built by `tar`.
fn docker_save(root: &Path, name: &str, seed: u64, repo_tag: &str, tamper: bool) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let layers = [bytes(seed, 200_000), bytes(seed + 1, 30_000)];
    let mut names = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let id = format!("{i:064x}");
        std::fs::create_dir_all(dir.join(&id)).unwrap();
        let mut data = l.clone();
        if tamper && i == 1 {
            data[100] ^= 1;
        }
        std::fs::write(dir.join(&id).join("layer.tar"), &data).unwrap();
        names.push(format!("\"{id}/layer.tar\""));
        diff_ids.push(format!("\"{}\"", sha256(l)));
    }
    let config = format!(
        r#"{{"architecture":"arm64","os":"linux","rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let config_name = format!("{}.json", &sha256(config.as_bytes())[7..]);
    std::fs::write(dir.join(&config_name), &config).unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        format!(
            r#"[{{"Config":"{config_name}","RepoTags":["{repo_tag}"],"Layers":[{}]}}]"#,
            names.join(",")
        ),
    )
    .unwrap();
    let tar = root.join(format!("{name}.tar"));
    let st = Command::new("tar")
        .args([
            "-cf",
            tar.to_str().unwrap(),
            "-C",
            dir.to_str().unwrap(),
            ".",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    tar
}

#[test]
fn imports_skopeo_oci_archives_and_docker_save_archives_and_refuses_tampering() {
    let tmp = TempDir::new("import");
    let b = Registry::start(&tmp.path().join("b"));
    let c = b.client();
    let server = format!("http://{}", b.addr);

    // skopeo's oci-archive, imported through the running registry.
    let src = new_layout(tmp.path(), "src");
    let top = image(&src, "arm64", &[bytes(800, 120_000)]);
    layout(&src, OCI_MANIFEST, &top, "v2");
    let archive = tmp.path().join("skopeo.tar");
    skopeo(&[
        "copy",
        "--preserve-digests",
        &format!("oci:{}:v2", src.display()),
        &format!("oci-archive:{}:plant/tool:v2", archive.display()),
    ]);
    let out = ok(&["import", archive.to_str().unwrap(), "--server", &server]);
    assert!(out.contains("imported plant/tool:v2"), "{out}");
    let m = c.get("/v2/plant/tool/manifests/v2");
    assert_eq!(m.status, 200);
    assert_eq!(m.header("Docker-Content-Digest"), Some(top.0.as_str()));
    // --repo renames.
    let out = ok(&[
        "import",
        archive.to_str().unwrap(),
        "--server",
        &server,
        "--repo",
        "site/tool:stable",
    ]);
    assert!(out.contains("imported site/tool:stable"), "{out}");
    assert_eq!(c.get("/v2/site/tool/manifests/stable").status, 200);

    // docker save format.
    let saved = docker_save(tmp.path(), "saved", 810, "factory/legacy:v3", false);
    let out = ok(&["import", saved.to_str().unwrap(), "--server", &server]);
    assert!(out.contains("imported factory/legacy:v3"), "{out}");
    assert_eq!(c.get("/v2/factory/legacy/manifests/v3").status, 200);
    let pulled = tmp.path().join("legacy");
    pull(&format!("{}/factory/legacy:v3", b.addr), &pulled, "v3");

    // A tampered layer: refused, named, and nothing of the image shows.
    let bad = docker_save(tmp.path(), "bad", 820, "factory/bad:v1", true);
    let config_digest = {
        let mut f = std::fs::File::open(tmp.path().join("bad/manifest.json")).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        format!(
            "sha256:{}",
            v[0]["Config"].as_str().unwrap().trim_end_matches(".json")
        )
    };
    let tampered = sha256(&bytes(821, 30_000));
    let err = fails(&["import", bad.to_str().unwrap(), "--server", &server]);
    assert!(err.contains(&tampered), "the message names the blob: {err}");
    assert!(err.contains("factory/bad:v1"), "{err}");
    assert_eq!(c.get("/v2/factory/bad/manifests/v1").status, 404);
    assert_eq!(
        c.head(&format!("/v2/factory/bad/blobs/{config_digest}"))
            .status,
        404
    );
    let good_layer = sha256(&bytes(820, 200_000));
    assert_eq!(
        c.head(&format!("/v2/factory/bad/blobs/{good_layer}"))
            .status,
        404
    );
    drop(b);

    // The same refusal against the stopped registry's store.
    let err = fails(&[
        "import",
        bad.to_str().unwrap(),
        "--data-dir",
        tmp.path().join("b").to_str().unwrap(),
    ]);
    assert!(err.contains(&tampered), "{err}");
    let b = Registry::start(&tmp.path().join("b"));
    let c = b.client();
    assert_eq!(c.get("/v2/factory/bad/manifests/v1").status, 404);
    assert_eq!(
        c.head(&format!("/v2/factory/bad/blobs/{config_digest}"))
            .status,
        404
    );
    assert_eq!(c.get("/v2/factory/legacy/manifests/v3").status, 200);
}

/// A TCP proxy to `target` that counts the bytes it passes (both ways); when the count
/// first exceeds `cut_after`, it calls `on_cut`, and drops the connection if that says so.
struct Proxy {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    sent: Arc<AtomicU64>,
    cut_after: Arc<AtomicU64>,
}

/// What the proxy does when the count passes `cut_after` (once): true drops the connection.
type OnCut = Arc<Mutex<Option<Box<dyn FnOnce() -> bool + Send>>>>;

/// Copies `from` to `to`, counting into `sent`; see `Proxy`.
fn pump(mut from: TcpStream, mut to: TcpStream, sent: &AtomicU64, cut: &AtomicU64, on_cut: &OnCut) {
    let mut buf = [0u8; 16384];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
        if sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > cut.load(Ordering::SeqCst) {
            let f = on_cut.lock().unwrap().take();
            if f.is_some_and(|f| f()) {
                break;
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

fn proxy(target: SocketAddr, on_cut: OnCut) -> Proxy {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let p = Proxy {
        addr: l.local_addr().unwrap(),
        target: Arc::new(Mutex::new(target)),
        sent: Arc::default(),
        cut_after: Arc::new(AtomicU64::new(u64::MAX)),
    };
    let (t, sent, cut) = (p.target.clone(), p.sent.clone(), p.cut_after.clone());
    std::thread::spawn(move || {
        for client in l.incoming().map_while(Result::ok) {
            let to = *t.lock().unwrap();
            let Ok(upstream) = TcpStream::connect(to) else {
                continue;
            };
            for (from, into) in [
                (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                (upstream, client),
            ] {
                let (sent, cut, on_cut) = (sent.clone(), cut.clone(), on_cut.clone());
                std::thread::spawn(move || pump(from, into, &sent, &cut, &on_cut));
            }
        }
    });
    p
}

fn mirror_config(dir: &Path, mirrors: serde_json::Value) -> PathBuf {
    let path = dir.join("outpost.json");
    // Port 0: the commands find a registry by its store, never by an address.
    let cfg = serde_json::json!({ "listen": "127.0.0.1:0", "dataDir": dir.join("data"), "mirrors": mirrors });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

/// distribution 2.8 (Debian's docker-registry) on an ephemeral port.
struct Distribution(Child, SocketAddr);

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn distribution(dir: &Path) -> Distribution {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = dir.join("distribution.yml");
    std::fs::create_dir_all(dir.join("dist")).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {port}\n",
            dir.join("dist").display()
        ),
    )
    .unwrap();
    let mut child = Command::new("docker-registry")
        .args(["serve", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("docker-registry is required: run ./test.sh, which installs it");
    let stderr = child.stderr.take().unwrap();
    let d = Distribution(child, port);
    // Its own "listening on" line, not a connection: another process may have taken the
    // port since it was free, and the test must not talk to that.
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        if line.contains(&format!("listening on {port}")) {
            // Drained from now on, so that its request log never fills the pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return d;
        }
        seen.push(line);
    }
    panic!("distribution did not start: {}", seen.join("\n"));
}

fn run_value(out: &str, key: &str) -> u64 {
    // "mirror NAME: ok (N image(s) checked, M fetched, K blob(s), X B in ...)"
    let line = out.lines().find(|l| l.starts_with("mirror ")).unwrap_or("");
    let after = line.split_once(" (").map_or("", |(_, r)| r);
    let pick = |i: usize| -> u64 {
        after
            .split(", ")
            .nth(i)
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX)
    };
    match key {
        "checked" => pick(0),
        "fetched" => pick(1),
        "blobs" => pick(2),
        _ => unreachable!(),
    }
}

#[test]
fn sync_from_outpost_and_distribution_with_filters_resumes_after_the_upstream_dies() {
    let tmp = TempDir::new("sync");
    let a_data = tmp.path().join("a");
    let mut a = Registry::start(&a_data);
    let v10 = multi_arch(tmp.path(), "v10", 900, "v1.0");
    let v11 = multi_arch(tmp.path(), "v11", 910, "v1.1");
    let v20 = multi_arch(tmp.path(), "v20", 920, "v2.0");
    for (img, tag) in [(&v10, "v1.0"), (&v11, "v1.1"), (&v20, "v2.0")] {
        push(&img.dir, tag, &format!("{}/plant/app:{tag}", a.addr));
    }
    let big = new_layout(tmp.path(), "big");
    let big_layer = bytes(930, 24 << 20);
    let big_top = image(&big, "arm64", std::slice::from_ref(&big_layer));
    layout(&big, OCI_MANIFEST, &big_top, "v1");
    push(&big, "v1", &format!("{}/plant/big:v1", a.addr));

    // A proxy in front of A that can kill it mid-blob.
    let kill: OnCut = Arc::default();
    let px = proxy(a.addr, kill.clone());
    let dist = distribution(tmp.path());
    push(&v11.dir, "v1.1", &format!("{}/edge/app:v1.1", dist.1));
    push(&v20.dir, "v2.0", &format!("{}/edge/app:v2.0", dist.1));

    let b_dir = tmp.path().join("bcfg");
    let cfg = mirror_config(
        &b_dir,
        serde_json::json!([
            {"name": "hq", "upstream": format!("http://{}", px.addr),
             "repositories": ["plant/app"], "tagRegex": "^v1\\.", "platforms": ["linux/arm64"]},
            {"name": "dist", "upstream": format!("http://{}", dist.1),
             "repositories": ["edge/app"], "tags": ["v1.1", "v2.0"], "platforms": ["linux/arm64"]},
            {"name": "big", "upstream": format!("http://{}", px.addr), "repositories": ["plant/big"]}
        ]),
    );
    let cfg_s = cfg.to_str().unwrap();
    // B is stopped: the pass works on its store (created by the first run).
    std::fs::create_dir_all(b_dir.join("data")).unwrap();
    let b0 = Registry::start(&b_dir.join("data"));
    drop(b0);
    let out = ok(&["mirror", "run", "hq", "--config", cfg_s]);
    assert_eq!(run_value(&out, "checked"), 2, "{out}");
    assert_eq!(run_value(&out, "fetched"), 2, "{out}");
    assert_eq!(
        run_value(&out, "blobs"),
        6,
        "arm64 config + 2 layers, twice: {out}"
    );
    let again = ok(&["mirror", "run", "hq", "--config", cfg_s]);
    assert_eq!(run_value(&again, "fetched"), 0, "{again}");
    assert!(
        again.contains(" 0 B in"),
        "second pass fetches nothing: {again}"
    );

    // B running: the pass goes through its admin socket.
    let b = Registry::start_with(&b_dir.join("data"), &["--config", cfg_s]);
    let c = b.client();
    let out = ok(&["mirror", "run", "dist", "--config", cfg_s]);
    assert_eq!(run_value(&out, "fetched"), 2, "{out}");
    let again = ok(&["mirror", "run", "dist", "--config", cfg_s]);
    assert!(again.contains(" 0 B in"), "{again}");
    for (repo, tag, img) in [
        ("plant/app", "v1.0", &v10),
        ("plant/app", "v1.1", &v11),
        ("edge/app", "v1.1", &v11),
    ] {
        let idx = c.get(&format!("/v2/{repo}/manifests/{tag}"));
        assert_eq!(idx.status, 200, "{repo}:{tag}");
        let v = idx.json();
        assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(v["manifests"][0]["digest"], img.arm.as_str());
        for l in &img.amd_layers {
            assert_eq!(
                c.head(&format!("/v2/{repo}/blobs/{l}")).status,
                404,
                "no amd64 layer"
            );
        }
    }
    assert_eq!(
        c.get("/v2/plant/app/manifests/v2.0").status,
        404,
        "tag regex"
    );
    assert_eq!(c.get("/v2/edge/app/manifests/v2.0").status, 200, "tag list");

    // Kill A when 8 MiB of the 24 MiB layer have gone through.
    let pid = a.child.id();
    *kill.lock().unwrap() = Some(Box::new(move || {
        signal(pid, "KILL");
        true
    }));
    px.cut_after
        .store(px.sent.load(Ordering::SeqCst) + (8 << 20), Ordering::SeqCst);
    let broken = outpost()
        .args(["mirror", "run", "big", "--config", cfg_s])
        .output()
        .unwrap();
    let t = text(&broken);
    assert!(!broken.status.success(), "{t}");
    assert!(t.contains("failed plant/big:v1"), "{t}");
    let status = ok(&["mirror", "status", "--config", cfg_s]);
    assert!(status.contains("failed plant/big:v1"), "{status}");
    let admin = c.get("/admin/mirrors");
    assert_eq!(admin.status, 200);
    let big_status = admin.json()["mirrors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "big")
        .cloned()
        .unwrap();
    assert_eq!(big_status["lastRun"]["result"], "failed");
    assert!(!big_status["lastRun"]["failures"][0]["reason"]
        .as_str()
        .unwrap()
        .is_empty());

    // A comes back (another port; the proxy follows): the next pass resumes the layer.
    a.kill();
    let a2 = Registry::start(&a_data);
    *px.target.lock().unwrap() = a2.addr;
    px.cut_after.store(u64::MAX, Ordering::SeqCst);
    let before = px.sent.load(Ordering::SeqCst);
    let out = ok(&["mirror", "run", "big", "--config", cfg_s]);
    assert_eq!(run_value(&out, "fetched"), 1, "{out}");
    let moved = px.sent.load(Ordering::SeqCst) - before;
    assert!(
        moved < (20 << 20),
        "resumed with a Range request: {moved} bytes went through, the layer has 24 MiB"
    );
    let got = c.get(&format!("/v2/plant/big/blobs/{}", sha256(&big_layer)));
    assert_eq!(got.status, 200);
    assert_eq!(sha256(&got.body), sha256(&big_layer));
}

#[test]
fn pull_through_cache_fetches_once_streams_and_serves_with_the_upstream_down() {
    let tmp = TempDir::new("cache");
    let mut a = Registry::start(&tmp.path().join("a"));
    let one = new_layout(tmp.path(), "one");
    let t1 = image(&one, "arm64", &[bytes(950, 3 << 20), bytes(951, 10_000)]);
    layout(&one, OCI_MANIFEST, &t1, "v1");
    push(&one, "v1", &format!("{}/plant/one:v1", a.addr));
    let many = new_layout(tmp.path(), "many");
    let many_layers = [bytes(960, 6 << 20), bytes(961, 2 << 20), bytes(962, 5_000)];
    let t2 = image(&many, "arm64", &many_layers);
    layout(&many, OCI_MANIFEST, &t2, "v1");
    push(&many, "v1", &format!("{}/plant/many:v1", a.addr));

    let cfg = mirror_config(
        &tmp.path().join("b"),
        serde_json::json!([{"name": "a", "upstream": format!("http://{}", a.addr), "pullThrough": "cache"}]),
    );
    let b = Registry::start_with(
        &tmp.path().join("b/data"),
        &["--config", cfg.to_str().unwrap()],
    );

    // 8 parallel pulls of an image B does not have yet.
    let dirs: Vec<PathBuf> = (0..8).map(|i| tmp.path().join(format!("p{i}"))).collect();
    let handles: Vec<_> = dirs
        .iter()
        .map(|d| {
            let (d, from) = (d.clone(), format!("{}/cache/plant/many:v1", b.addr));
            std::thread::spawn(move || pull(&from, &d, "v1"))
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for d in &dirs {
        let top: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("index.json")).unwrap()).unwrap();
        assert_eq!(top["manifests"][0]["digest"], t2.0.as_str());
    }
    let log = a.log_text();
    for l in &many_layers {
        let get = format!("GET /v2/plant/many/blobs/{} 200", sha256(l));
        assert_eq!(
            log.matches(&get).count(),
            1,
            "each blob fetched from A once: {get}"
        );
    }

    // One pull through B, then A goes away: B still serves it.
    let first = tmp.path().join("first");
    pull(&format!("{}/cache/plant/one:v1", b.addr), &first, "v1");
    a.kill();
    let second = tmp.path().join("second");
    pull(&format!("{}/cache/plant/one:v1", b.addr), &second, "v1");
    let top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(second.join("index.json")).unwrap()).unwrap();
    assert_eq!(top["manifests"][0]["digest"], t1.0.as_str());
    // Something never cached fails cleanly, saying why.
    let c = b.client();
    let miss = c.get("/v2/cache/plant/never/manifests/v1");
    assert_eq!((miss.status, miss.code()), (503, "UNAVAILABLE".to_owned()));
    let status = ok(&["mirror", "status", "--config", cfg.to_str().unwrap()]);
    assert!(status.contains("pull-through cache at cache/"), "{status}");
    assert!(
        status.contains("served while the upstream failed"),
        "{status}"
    );
}

#[test]
fn mirroring_signs_in_to_registries_with_auth_and_tls_on() {
    let tmp = TempDir::new("mirror-auth");
    let a_dir = tmp.path().join("a");
    let (cert, key) = self_signed(&tmp.path().join("tls"));
    std::fs::create_dir_all(&a_dir).unwrap();
    let a_cfg = a_dir.join("outpost.json");
    std::fs::write(
        &a_cfg,
        serde_json::json!({
            "listen": "127.0.0.1:0",
            "dataDir": a_dir.join("data"),
            "tls": {"certFile": cert, "keyFile": key},
            "access": [{"repositories": "plant/*", "pull": ["hq"], "push": ["hq"]}]
        })
        .to_string(),
    )
    .unwrap();
    let a_cfg_s = a_cfg.to_str().unwrap();
    let added = outpost_stdin(
        &["user", "add", "hq", "--config", a_cfg_s],
        "hq-secret-55\n",
    );
    assert!(added.status.success(), "{}", text(&added));
    let a = Registry::start_with(&a_dir.join("data"), &["--config", a_cfg_s]);
    let server = format!("https://{}", a.addr);
    let cert_s = cert.to_str().unwrap();

    // Import through the HTTP API needs the user's credentials, and the CA to trust.
    let src = new_layout(tmp.path(), "src");
    let top = image(&src, "arm64", &[bytes(990, 70_000)]);
    layout(&src, OCI_MANIFEST, &top, "plant/app:v1");
    let src_s = src.to_str().unwrap();
    let untrusted = fails(&["import", src_s, "--server", &server]);
    assert!(
        untrusted.to_lowercase().contains("certificate"),
        "{untrusted}"
    );
    let refused = fails(&["import", src_s, "--server", &server, "--ca-file", cert_s]);
    assert!(refused.contains("401"), "{refused}");
    let login = ["--server", &server, "--ca-file", cert_s, "--user", "hq"];
    let o = outpost()
        .args(["import", src_s])
        .args(login)
        .env("OUTPOST_PASSWORD", "hq-secret-55")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("imported plant/app:v1"), "{}", text(&o));
    let o = outpost()
        .args(["export", "plant/app", "-o"])
        .arg(tmp.path().join("out"))
        .args(login)
        .env("OUTPOST_PASSWORD", "hq-secret-55")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(tmp.path().join("out/index.json").exists());

    // A mirror with the right password and CA syncs (Outpost answers with a bearer
    // challenge); with a wrong password, or without the CA, the pass fails and says why.
    std::fs::write(tmp.path().join("good"), "hq-secret-55\n").unwrap();
    std::fs::write(tmp.path().join("bad"), "nope\n").unwrap();
    let mirror = |name: &str, file: &str, ca: bool| {
        let mut m = serde_json::json!({"name": name, "upstream": server, "username": "hq",
            "passwordFile": tmp.path().join(file), "repositories": ["plant/app"]});
        if ca {
            m["caFile"] = serde_json::json!(cert);
        }
        m
    };
    let cfg = mirror_config(
        &tmp.path().join("b"),
        serde_json::json!([
            mirror("good", "good", true),
            mirror("bad", "bad", true),
            mirror("noca", "good", false)
        ]),
    );
    let b_cfg = cfg.to_str().unwrap();
    let out = ok(&["mirror", "run", "good", "--config", b_cfg]);
    assert_eq!(run_value(&out, "fetched"), 1, "{out}");
    let bad = fails(&["mirror", "run", "bad", "--config", b_cfg]);
    assert!(
        bad.contains("failed plant/app") && bad.contains("401"),
        "{bad}"
    );
    let noca = fails(&["mirror", "run", "noca", "--config", b_cfg]);
    assert!(noca.to_lowercase().contains("certificate"), "{noca}");
}

#[test]
fn pull_through_passes_a_blob_on_as_it_arrives() {
    let tmp = TempDir::new("cache-stream");
    let a = Registry::start(&tmp.path().join("a"));
    let layer = bytes(1000, 4 << 20);
    let (digest, resp) = a.client().push_blob("plant/big", &layer);
    assert_eq!(resp.status, 201);
    // The upstream stalls for 3 s once 1 MiB has gone through.
    let stall: OnCut = Arc::new(Mutex::new(Some(Box::new(|| {
        std::thread::sleep(Duration::from_secs(3));
        false
    }))));
    let px = proxy(a.addr, stall);
    px.cut_after.store(1 << 20, Ordering::SeqCst);
    let cfg = mirror_config(
        &tmp.path().join("b"),
        serde_json::json!([{"name": "a", "upstream": format!("http://{}", px.addr), "pullThrough": "cache"}]),
    );
    let b = Registry::start_with(
        &tmp.path().join("b/data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let t = std::time::Instant::now();
    let mut s = TcpStream::connect(b.addr).unwrap();
    write!(
        s,
        "GET /v2/cache/plant/big/blobs/{digest} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let mut first_body = None;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if first_body.is_none()
            && got
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .is_some_and(|h| got.len() > h + 4 + 65536)
        {
            first_body = Some(t.elapsed());
        }
    }
    let total = t.elapsed();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got[..head_end])
    );
    assert_eq!(sha256(&got[head_end..]), digest);
    let first_body = first_body.unwrap();
    assert!(
        total >= Duration::from_secs(3),
        "the upstream stalled 3 s: {total:?}"
    );
    assert!(
        first_body < Duration::from_secs(2),
        "the first bytes came {first_body:?} after the request, the whole blob after {total:?}"
    );
    // A blob of another repository of B is not served through the cache by its digest.
    let (private, _) = b.client().push_blob("private/x", &bytes(1001, 5000));
    let leak = b
        .client()
        .get(&format!("/v2/cache/plant/big/blobs/{private}"));
    assert_eq!(leak.status, 404, "{}", String::from_utf8_lossy(&leak.body));
    // Stored: served again with the upstream gone.
    drop(a);
    let again = b
        .client()
        .get(&format!("/v2/cache/plant/big/blobs/{digest}"));
    assert_eq!(again.status, 200);
    assert_eq!(sha256(&again.body), digest);
}

#[test]
fn an_interrupted_import_runs_again_and_skips_what_it_stored() {
    let tmp = TempDir::new("import-again");
    let b = Registry::start(&tmp.path().join("b"));
    let src = new_layout(tmp.path(), "src");
    let top = image(&src, "arm64", &[bytes(1010, 60_000), bytes(1011, 6 << 20)]);
    layout(&src, OCI_MANIFEST, &top, "plant/app:v1");
    // The connection drops after 2 MiB: the big layer is cut off.
    let px = proxy(b.addr, Arc::new(Mutex::new(Some(Box::new(|| true)))));
    px.cut_after.store(2 << 20, Ordering::SeqCst);
    let src_s = src.to_str().unwrap();
    let broken = fails(&["import", src_s, "--server", &format!("http://{}", px.addr)]);
    assert!(broken.contains("plant/app:v1"), "{broken}");
    let c = b.client();
    assert_eq!(c.get("/v2/plant/app/manifests/v1").status, 404);
    let again = ok(&["import", src_s, "--server", &format!("http://{}", b.addr)]);
    assert!(
        again.contains("1 blob(s) stored, 2 already present"),
        "{again}"
    );
    assert_eq!(c.get("/v2/plant/app/manifests/v1").status, 200);
    let check = c.get("/admin/check");
    assert_eq!(check.status, 200, "{:?}", check.json());
}

/// Pushes to `repo:tag` of the registry `c` talks to an image of one layer of `size` bytes
/// from `seed`; returns (manifest digest, layer).
fn upstream_image(c: &Client, repo: &str, tag: &str, seed: u64, size: usize) -> (String, Vec<u8>) {
    let layer = bytes(seed, size);
    let config = format!(r#"{{"architecture":"arm64","os":"linux","seed":{seed}}}"#).into_bytes();
    for b in [&config, &layer] {
        assert_eq!(c.push_blob(repo, b).1.status, 201);
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        sha256(&config),
        config.len(),
        sha256(&layer),
        layer.len()
    );
    let r = c.put_manifest(repo, tag, OCI_MANIFEST, manifest.as_bytes());
    assert_eq!(r.status, 201, "{r:?}");
    (sha256(manifest.as_bytes()), layer)
}

/// Pulls `repo:tag` through `c` as a client would: the manifest, then its blobs.
fn pull_http(c: &Client, repo: &str, tag: &str) -> String {
    let m = c.get(&format!("/v2/{repo}/manifests/{tag}"));
    assert_eq!(m.status, 200, "{repo}:{tag}: {m:?}");
    let v = m.json();
    let mut blobs = vec![v["config"]["digest"].as_str().unwrap().to_owned()];
    blobs.extend(
        v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned()),
    );
    for d in blobs {
        let b = c.get(&format!("/v2/{repo}/blobs/{d}"));
        assert_eq!(b.status, 200, "{repo}@{d}");
        assert_eq!(sha256(&b.body), d);
    }
    m.header("Docker-Content-Digest").unwrap().to_owned()
}

fn catalog(c: &Client) -> Vec<String> {
    c.get("/v2/_catalog").json()["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect()
}

/// Waits (bounded) until the catalog is `want`: a pulled-through blob is committed, and the
/// cache then evicts, after its last byte went to the client.
fn settles(c: &Client, want: &[&str]) {
    let t = std::time::Instant::now();
    loop {
        let got = catalog(c);
        if got == want {
            return;
        }
        assert!(t.elapsed() < bound(Duration::from_secs(5)), "{got:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_bounded_cache_evicts_the_least_recently_pulled_and_never_what_is_pinned() {
    let tmp = TempDir::new("bounded");
    let a = Registry::start(&tmp.path().join("a"));
    let up = a.client();
    let mut layers = Vec::new();
    for i in 1..=4 {
        layers.push(upstream_image(&up, &format!("plant/i{i}"), "v1", 700 + i, 1 << 20).1);
    }
    let cfg = mirror_config(
        &tmp.path().join("b"),
        serde_json::json!([{"name": "a", "upstream": format!("http://{}", a.addr), "pullThrough": "cache",
            "cache": {"maxSize": "3MiB", "pinned": ["plant/i1"], "tagTtl": "1h"}}]),
    );
    let b = Registry::start_with(
        &tmp.path().join("b/data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let c = b.client();
    // Bytes held once the cache has counted `evicted` evictions (its status is written
    // after the eviction's deletions).
    let held = |evicted: u64| {
        let t = std::time::Instant::now();
        loop {
            let s = c.get("/admin/mirrors").json();
            let cache = &s["mirrors"][0]["cache"];
            if cache["evictedImages"].as_u64() == Some(evicted) {
                return cache["held"].as_u64().unwrap();
            }
            assert!(t.elapsed() < bound(Duration::from_secs(5)), "{cache}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let fetched = |i: usize| {
        a.requests()
            .join("\n")
            .matches(&format!(
                "GET /v2/plant/i{i}/blobs/{} 200",
                sha256(&layers[i - 1])
            ))
            .count()
    };
    // i1 (pinned) and i2 fit; i3 takes the cache past 3 MiB: i2, pulled least recently
    // and not pinned, goes.
    for i in 1..=3 {
        pull_http(&c, &format!("cache/plant/i{i}"), "v1");
        std::thread::sleep(Duration::from_millis(1100)); // pulls are ordered by the second
    }
    assert!(held(1) <= 3 << 20);
    settles(&c, &["cache/plant/i1", "cache/plant/i3"]);
    // Pulled again, i2 comes back from the upstream, and now i3 is the oldest.
    pull_http(&c, "cache/plant/i2", "v1");
    assert_eq!(fetched(2), 2);
    settles(&c, &["cache/plant/i1", "cache/plant/i2"]);
    std::thread::sleep(Duration::from_millis(1100));
    // A later pull of i2 counts: i4 evicts neither it (pulled last) nor i1 (pinned).
    pull_http(&c, "cache/plant/i2", "v1");
    std::thread::sleep(Duration::from_millis(1100));
    pull_http(&c, "cache/plant/i4", "v1");
    settles(&c, &["cache/plant/i1", "cache/plant/i4"]);
    assert!(held(3) <= 3 << 20);
    // The pinned image was fetched once and never evicted; the store is consistent.
    assert_eq!(fetched(1), 1);
    pull_http(&c, "cache/plant/i1", "v1");
    assert_eq!(fetched(1), 1);
    let check = c.get("/admin/check");
    assert_eq!(check.status, 200, "{check:?}");
    assert!(b.log_text().contains("evicted cache/plant/i2@"));
    let status = ok(&["mirror", "status", "--config", cfg.to_str().unwrap()]);
    assert!(status.contains("image(s) evicted"), "{status}");
}

#[test]
fn a_cache_takes_no_pushes_rechecks_tags_per_ttl_answers_heads_at_once_and_names_a_dead_upstream() {
    let tmp = TempDir::new("cachebehaviour");
    let mut a = Registry::start(&tmp.path().join("a"));
    let up = a.client();
    let (x, _) = upstream_image(&up, "plant/t", "v1", 800, 10_000);
    let cfg = mirror_config(
        &tmp.path().join("b"),
        serde_json::json!([{"name": "a", "upstream": format!("http://{}", a.addr), "pullThrough": "cache",
            "cache": {"tagTtl": "2s"}}]),
    );
    let b = Registry::start_with(
        &tmp.path().join("b/data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let c = b.client();
    let asked = || {
        a.requests()
            .join("\n")
            .matches("GET /v2/plant/t/manifests/v1 ")
            .count()
    };

    // Within tagTtl a tag is served from the cache without asking the upstream.
    let digest = |r: Resp| r.header("Docker-Content-Digest").unwrap().to_owned();
    assert_eq!(digest(c.get("/v2/cache/plant/t/manifests/v1")), x);
    assert_eq!(asked(), 1);
    let (y, layer_y) = upstream_image(&up, "plant/t", "v1", 801, 10_000);
    assert_eq!(digest(c.get("/v2/cache/plant/t/manifests/v1")), x);
    assert_eq!(asked(), 1);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(digest(c.get("/v2/cache/plant/t/manifests/v1")), y);
    assert_eq!(asked(), 2);

    // Pushes into the cache are refused, and skopeo says why.
    let r = c.req("POST", "/v2/cache/plant/t/blobs/uploads/", &[], Body::None);
    assert_eq!(
        (r.status, r.code()),
        (405, "UNSUPPORTED".to_owned()),
        "{r:?}"
    );
    let r = c.put_manifest("cache/plant/t", "v2", OCI_MANIFEST, b"{}");
    assert_eq!(
        (r.status, r.code()),
        (405, "UNSUPPORTED".to_owned()),
        "{r:?}"
    );
    let one = new_layout(tmp.path(), "one");
    let t1 = image(&one, "arm64", &[bytes(802, 5_000)]);
    layout(&one, OCI_MANIFEST, &t1, "v1");
    let o = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", one.display()))
        .arg(format!("docker://{}/cache/plant/mine:v1", b.addr))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("takes no pushes"), "{}", text(&o));

    // A HEAD of a blob the cache lacks asks the upstream and fetches nothing; a Range is
    // passed on from the upstream.
    let ly = sha256(&layer_y);
    let h = c.head(&format!("/v2/cache/plant/t/blobs/{ly}"));
    assert_eq!(h.status, 200);
    assert_eq!(h.header("Content-Length"), Some("10000"));
    assert_eq!(h.header("Docker-Content-Digest"), Some(ly.as_str()));
    let part = c.get_range(&format!("/v2/cache/plant/t/blobs/{ly}"), "100-199");
    assert_eq!(part.status, 206, "{}", b.log_text());
    assert_eq!(part.body, &layer_y[100..200]);
    assert_eq!(part.header("Content-Range"), Some("bytes 100-199/10000"));
    let upstream = a.requests().join("\n");
    assert_eq!(
        upstream
            .matches(&format!("GET /v2/plant/t/blobs/{ly} 200"))
            .count(),
        0
    );
    assert_eq!(
        upstream
            .matches(&format!("GET /v2/plant/t/blobs/{ly} 206"))
            .count(),
        1
    );
    assert!(c.get("/v2/_catalog").json()["repositories"] == serde_json::json!(["cache/plant/t"]));

    // With the upstream down, what is cached is served, and a miss says the upstream is
    // unreachable rather than that the image does not exist.
    a.kill();
    assert_eq!(digest(c.get("/v2/cache/plant/t/manifests/v1")), y);
    let miss = c.get("/v2/cache/plant/never/manifests/v1");
    assert_eq!((miss.status, miss.code()), (503, "UNAVAILABLE".to_owned()));
    assert!(
        String::from_utf8_lossy(&miss.body).contains("unreachable"),
        "{miss:?}"
    );
    let miss = c.get(&format!("/v2/cache/plant/t/blobs/{}", sha256(b"never")));
    assert_eq!((miss.status, miss.code()), (503, "UNAVAILABLE".to_owned()));
}

#[test]
fn a_cache_fill_past_a_quota_is_passed_on_not_kept_and_leaves_nothing_behind() {
    let tmp = TempDir::new("cachequota");
    let a = Registry::start(&tmp.path().join("a"));
    let (_, layer) = upstream_image(&a.client(), "plant/big", "v1", 900, 1 << 20);
    let dir = tmp.path().join("b");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("outpost.json");
    let c = serde_json::json!({ "listen": "127.0.0.1:0", "dataDir": dir.join("data"), "maxStoreSize": "512KiB",
        "mirrors": [{"name": "a", "upstream": format!("http://{}", a.addr), "pullThrough": "cache"}] });
    std::fs::write(&cfg, c.to_string()).unwrap();
    let b = Registry::start_with(&dir.join("data"), &["--config", cfg.to_str().unwrap()]);
    let c = b.client();
    // The pull works; the layer past the quota is not kept, and no upload is left behind.
    for _ in 0..2 {
        pull_http(&c, "cache/plant/big", "v1");
    }
    let path = format!("/v2/plant/big/blobs/{} 200", sha256(&layer));
    assert_eq!(
        a.requests().join("\n").matches(&path).count(),
        2,
        "fetched each time"
    );
    let du = c.get("/admin/du").json();
    assert_eq!(du["store"]["uploadBytes"], 0, "{du}");
    assert!(
        du["store"]["blobBytes"].as_u64().unwrap() < 512 << 10,
        "{du}"
    );
    assert!(b.log_text().contains("passed on, not kept"));
}
