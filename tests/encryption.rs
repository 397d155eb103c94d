//! Per-repository encryption at rest, through the real binary: what reaches the disk, mounts
//! within one key, tampering, master key problems, rotation, crypto-erase and moves.

mod common;

use common::*;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashSet;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

const CHUNKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("chunks");
const BLOBS: TableDefinition<(u64, &str), (u64, u64, u64)> = TableDefinition::new("blobs");
const MANIFESTS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("manifests");

/// A scratch dir with a master key, a config with encryption rules, and a store directory.
struct Site {
    dir: TempDir,
}

impl Site {
    fn new(tag: &str) -> Site {
        let dir = TempDir::new(tag);
        let site = Site { dir };
        let out = outpost(&["key", "generate", site.key().to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        site.write_config(&site.key());
        site
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("master.key")
    }
    fn config(&self) -> PathBuf {
        self.dir.path().join("outpost.json")
    }
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    fn db(&self) -> PathBuf {
        self.data().join("outpost.redb")
    }
    /// plant-a/* → key plant-a (AES-256-GCM), plant-b/* → plant-b (ChaCha20-Poly1305),
    /// plant-c/* → plant-c (AES-256-GCM), everything else plaintext.
    fn write_config(&self, key: &Path) {
        // Port 0: the commands find the registry by its store, never by an address.
        let cfg = serde_json::json!({
            "listen": "127.0.0.1:0",
            "dataDir": self.data(),
            "chunkSize": "64KiB",
            "masterKeyFile": key,
            "encryption": [
                {"repositories": "plant-a/*", "key": "plant-a", "algorithm": "aes-256-gcm"},
                {"repositories": "plant-b/*", "key": "plant-b", "algorithm": "chacha20-poly1305"},
                {"repositories": "plant-c/*", "key": "plant-c"},
            ]
        });
        std::fs::write(self.config(), cfg.to_string()).unwrap();
    }
    fn start(&self) -> Registry {
        Registry::start_with(&self.data(), &["--config", self.config().to_str().unwrap()])
    }
    /// `outpost serve` with this site's config but master key `key` must refuse; its stderr.
    fn refuses_with(&self, key: &Path) -> String {
        let config = self.config();
        refuses(&[
            "--config",
            config.to_str().unwrap(),
            "--master-key-file",
            key.to_str().unwrap(),
        ])
    }
    /// Runs a management command that must succeed; its output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        text(&out)
    }
    /// Runs a management command that must fail; its output.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        text(&out)
    }
    /// Runs a management command against this site's config.
    fn cli(&self, args: &[&str]) -> Output {
        let config = self.config();
        let mut all = args.to_vec();
        all.extend(["--config", config.to_str().unwrap()]);
        outpost(&all)
    }
}

fn outpost(args: &[&str]) -> Output {
    common::outpost()
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run outpost")
}

/// `outpost serve ARGS` (on a free port, were it to start) must exit non-zero within 20 s;
/// returns its stderr.
fn refuses(args: &[&str]) -> String {
    let mut child = common::outpost()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(20));
    let Some(status) = status else {
        let _ = child.kill();
        panic!("outpost serve {args:?} started instead of refusing");
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "{err}");
    err
}

/// True if `file` contains any 64-byte run of `data`. Every such run contains a 32-byte
/// window of `data` starting at a multiple of 32, so looking those up at every offset of the
/// file finds it.
fn holds_run(file: &[u8], data: &[u8]) -> bool {
    assert!(data.len() >= 64);
    let windows: HashSet<&[u8]> = (0..=data.len() - 32)
        .step_by(32)
        .map(|i| &data[i..i + 32])
        .collect();
    let firsts: HashSet<u64> = windows
        .iter()
        .map(|w| u64::from_le_bytes(w[..8].try_into().unwrap()))
        .collect();
    file.windows(32).any(|w| {
        firsts.contains(&u64::from_le_bytes(w[..8].try_into().unwrap())) && windows.contains(w)
    })
}

/// Pushes an image of a config and 3 layers (one of 150 KB: three 64 KiB chunks) with a
/// secret annotation; returns (layer bytes, manifest bytes, manifest digest).
fn push_secret_image(c: &Client, repo: &str, seed: u64) -> (Vec<Vec<u8>>, Vec<u8>, String) {
    let config = format!(r#"{{"architecture":"arm64","os":"linux","seed":{seed}}}"#).into_bytes();
    let (cd, r) = c.push_blob(repo, &config);
    assert_eq!(r.status, 201, "{r:?}");
    let layers: Vec<Vec<u8>> = [150_000, 20_000, 5_000]
        .iter()
        .enumerate()
        .map(|(i, n)| bytes(seed * 10 + i as u64, *n))
        .collect();
    let mut refs = Vec::new();
    for l in &layers {
        let (d, r) = c.push_blob(repo, l);
        assert_eq!(r.status, 201, "{r:?}");
        refs.push((d, l.len()));
    }
    let refs: Vec<(&str, usize)> = refs.iter().map(|(d, n)| (d.as_str(), *n)).collect();
    // Unique text (a run of it found on disk can only come from this manifest).
    let secret: String = bytes(seed + 1000, 48)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let extra = format!(r#","annotations":{{"com.example.secret":"{secret}"}}"#);
    let manifest = image_manifest((&cd, config.len()), &refs, &extra);
    let r = c.put_manifest(repo, "v1", OCI_MANIFEST, &manifest);
    assert_eq!(r.status, 201, "{r:?}");
    let digest = sha256(&manifest);
    (layers, manifest, digest)
}

/// Pushes a signature-like artifact whose subject is manifest `subject` (`size` bytes);
/// returns its digest.
fn push_referrer(c: &Client, repo: &str, subject: &str, size: usize) -> String {
    let (empty, _) = c.push_blob(repo, b"{}");
    let extra = format!(
        r#","artifactType":"application/vnd.example.sig","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject}","size":{size}}},"annotations":{{"signer":"plant-a-ci"}}"#
    );
    let sig = image_manifest((&empty, 2), &[], &extra);
    let digest = sha256(&sig);
    let r = c.put_manifest(repo, &digest, OCI_MANIFEST, &sig);
    assert_eq!(r.status, 201, "{r:?}");
    digest
}

/// The referrers API of `repo` lists `sig` for `subject`, with its annotations.
fn assert_referrer(c: &Client, repo: &str, subject: &str, sig: &str) {
    let r = c.get(&format!("/v2/{repo}/referrers/{subject}"));
    assert_eq!(r.status, 200, "{r:?}");
    let list = r.json()["manifests"].clone();
    assert_eq!(list[0]["digest"], sig, "{list}");
    assert_eq!(list[0]["annotations"]["signer"], "plant-a-ci");
}

#[test]
fn encrypted_repositories_put_no_plaintext_on_disk() {
    let site = Site::new("enc-scan");
    let mut reg = site.start();
    let c = reg.client();
    let (aes_layers, aes_manifest, aes_digest) = push_secret_image(&c, "plant-a/app", 1);
    let (cha_layers, cha_manifest, _) = push_secret_image(&c, "plant-b/app", 2);
    let (plain_layers, plain_manifest, _) = push_secret_image(&c, "public/app", 3);
    let sig = push_referrer(&c, "plant-a/app", &aes_digest, aes_manifest.len());
    // The same layer in three domains is stored three times, once per key.
    let shared = bytes(99, 70_000);
    for repo in ["plant-a/app", "plant-b/app", "public/app"] {
        assert_eq!(c.push_blob(repo, &shared).1.status, 201);
    }
    let (blobs, _) = c.stored_blobs();
    assert_eq!(blobs, 3 * 4 + 3 + 1);
    // Everything reads back, through a restart.
    reg.restart();
    let c = reg.client();
    let r = c.get(&format!("/v2/plant-a/app/manifests/{aes_digest}"));
    assert_eq!((r.status, &r.body), (200, &aes_manifest));
    assert_referrer(&c, "plant-a/app", &aes_digest, &sig);
    for (repo, layers) in [("plant-a/app", &aes_layers), ("plant-b/app", &cha_layers)] {
        for l in layers.iter() {
            let r = c.get(&format!("/v2/{repo}/blobs/{}", sha256(l)));
            assert_eq!((r.status, r.body.len()), (200, l.len()));
            assert!(r.body == *l);
        }
        let r = c.get(&format!("/v2/{repo}/manifests/v1"));
        assert_eq!(r.status, 200);
    }
    // A range read across chunk boundaries of a sealed blob.
    let d = sha256(&aes_layers[0]);
    let r = c.get_range(&format!("/v2/plant-a/app/blobs/{d}"), "65000-140000");
    assert_eq!(r.status, 206);
    assert!(r.body == aes_layers[0][65000..=140000]);
    assert_eq!(reg.terminate().code(), Some(0));

    let file = std::fs::read(site.db()).unwrap();
    for l in aes_layers.iter().chain(&cha_layers) {
        assert!(
            !holds_run(&file, l),
            "plaintext of an encrypted layer on disk"
        );
    }
    // Manifests: their secret annotation (their digests are plaintext keys, by design).
    let annotations = |m: &[u8]| {
        let at = m.windows(9).position(|w| w == b"secret\":\"").unwrap() + 9;
        m[at..at + 96].to_vec()
    };
    assert!(!holds_run(&file, &annotations(&aes_manifest)));
    assert!(!holds_run(&file, &annotations(&cha_manifest)));
    // The scan does find plaintext where it is stored: the plaintext repository's.
    for l in &plain_layers {
        assert!(holds_run(&file, l), "the scan missed a plaintext layer");
    }
    assert!(holds_run(&file, &annotations(&plain_manifest)));
    assert!(holds_run(&file, &shared));
    // The sealed referrer's descriptor: its annotation is not on disk in the clear.
    assert!(!file.windows(10).any(|w| w == b"plant-a-ci"));
}

#[test]
fn mounts_only_between_repositories_with_one_key() {
    let site = Site::new("enc-mount");
    let reg = site.start();
    let c = reg.client();
    let layer = bytes(7, 90_000);
    let (d, r) = c.push_blob("plant-a/base", &layer);
    assert_eq!(r.status, 201);
    let mount = |to: &str, from: &str| {
        c.req(
            "POST",
            &format!("/v2/{to}/blobs/uploads/?mount={d}&from={from}"),
            &[],
            Body::None,
        )
    };
    // Same key: linked, no copy.
    assert_eq!(mount("plant-a/web", "plant-a/base").status, 201);
    assert_eq!(c.stored_blobs().0, 1);
    // Another key (same algorithm), another algorithm, plaintext: an upload session instead.
    for to in ["plant-c/web", "plant-b/web", "public/web"] {
        let r = mount(to, "plant-a/base");
        assert_eq!(r.status, 202, "{to}: {r:?}");
        let loc = r.header("Location").unwrap().to_owned();
        assert_eq!(c.head(&format!("/v2/{to}/blobs/{d}")).status, 404);
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = c.req(
            "PUT",
            &format!("{loc}{sep}digest={d}"),
            &[],
            Body::Bytes(&layer),
        );
        assert_eq!(r.status, 201, "{to}: {r:?}");
        assert!(c.get(&format!("/v2/{to}/blobs/{d}")).body == layer);
    }
    // Automatic mounts (no from=) search only the target's key too.
    let r = c.req(
        "POST",
        &format!("/v2/plant-b/other/blobs/uploads/?mount={d}"),
        &[],
        Body::None,
    );
    assert_eq!(r.status, 201, "plant-b/web holds it under plant-b's key");
    let stats = c.get("/admin/stats").json();
    assert_eq!(stats["mounts"]["refused"]["otherDomain"], 3, "{stats}");
    // One copy per key: plant-a, plant-c, plant-b, plaintext.
    assert_eq!(c.stored_blobs().0, 4);
    assert!(c.get("/admin/check").json()["ok"].as_bool().unwrap());
}

/// Opens the stopped store with redb and hands `f` the write transaction.
fn tamper(db: &Path, f: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::create(db).unwrap();
    let tx = db.begin_write().unwrap();
    f(&tx);
    tx.commit().unwrap();
}

/// The blob id of `digest` in an encrypted domain.
fn blob_id(db: &Path, digest: &str) -> u64 {
    let db = redb::Database::create(db).unwrap();
    let tx = db.begin_read().unwrap();
    let blobs = tx.open_table(BLOBS).unwrap();
    for row in blobs.iter().unwrap() {
        let (k, v) = row.unwrap();
        if k.value().0 != 0 && k.value().1 == digest {
            return v.value().0;
        }
    }
    panic!("{digest} not stored encrypted");
}

#[test]
fn tampered_data_is_never_served_and_is_logged() {
    let site = Site::new("enc-tamper");
    let mut reg = site.start();
    let c = reg.client();
    let small = bytes(1, 30_000); // one chunk
    let big = bytes(2, 200_000); // four chunks of 64 KiB less row overhead
    let victim = bytes(3, 30_000);
    let other = bytes(4, 30_000);
    let (ds, _) = c.push_blob("plant-a/app", &small);
    let (db_, _) = c.push_blob("plant-a/app", &big);
    let (dv, _) = c.push_blob("plant-a/app", &victim);
    let (dother, _) = c.push_blob("plant-a/app", &other);
    let (_, _, md) = push_secret_image(&c, "plant-a/img", 5);
    assert_eq!(reg.terminate().code(), Some(0));

    let id = |d: &str| blob_id(&site.db(), d);
    let (s, b, v, o) = (id(&ds), id(&db_), id(&dv), id(&dother));
    tamper(&site.db(), |tx| {
        let mut chunks = tx.open_table(CHUNKS).unwrap();
        let mut flip = |key: (u64, u64), at: usize| {
            let mut bytes = chunks.get(key).unwrap().unwrap().value().to_vec();
            bytes[at] ^= 0x01;
            chunks.insert(key, bytes.as_slice()).unwrap();
        };
        // One flipped bit in the small blob's only chunk.
        flip((s, 0), 40);
        // The big blob's second chunk.
        let second = chunks
            .range((b, 1)..(b, u64::MAX))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .0
            .value()
            .1;
        let mut bytes = chunks.get((b, second)).unwrap().unwrap().value().to_vec();
        bytes[100] ^= 0x80;
        chunks.insert((b, second), bytes.as_slice()).unwrap();
        // A chunk moved from one blob to another: intact ciphertext, wrong place.
        let intact = chunks.get((o, 0)).unwrap().unwrap().value().to_vec();
        chunks.insert((v, 0), intact.as_slice()).unwrap();
        // The last byte (the tag) of a sealed manifest.
        let mut manifests = tx.open_table(MANIFESTS).unwrap();
        let key = manifests
            .iter()
            .unwrap()
            .map(|r| {
                let (k, _) = r.unwrap();
                let (repo, digest) = k.value();
                (repo, digest.to_owned())
            })
            .find(|k| k.1 == md)
            .map(|k| k.0)
            .unwrap();
        let mut bytes = manifests
            .get((key, md.as_str()))
            .unwrap()
            .unwrap()
            .value()
            .to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        manifests
            .insert((key, md.as_str()), bytes.as_slice())
            .unwrap();
    });

    let reg = site.start();
    let c = reg.client();
    // A flipped bit, and a chunk moved in from another blob: 500, nothing of them served.
    for d in [&ds, &dv] {
        let r = c.get(&format!("/v2/plant-a/app/blobs/{d}"));
        assert_eq!(r.status, 500, "{r:?}");
        assert_eq!(r.code(), "UNKNOWN");
        assert!(r.body.len() < 200, "an error body, not content");
    }
    // The blob whose chunk was copied still serves.
    assert!(c.get(&format!("/v2/plant-a/app/blobs/{dother}")).body == other);
    // The big blob: the first chunk is fine, so headers go out; the connection is cut before
    // the damaged chunk, and no byte of it is sent.
    let mut s = std::net::TcpStream::connect(reg.addr).unwrap();
    write!(
        s,
        "GET /v2/plant-a/app/blobs/{db_} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = BufReader::new(s).read_to_end(&mut raw);
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(raw.starts_with(b"HTTP/1.1 200"));
    let body = &raw[head_end..];
    assert!(body.len() < big.len(), "a damaged blob was served whole");
    assert!(
        body == &big[..body.len()],
        "bytes other than the blob's were sent"
    );
    // A range within the intact first chunk still serves.
    let r = c.get_range(&format!("/v2/plant-a/app/blobs/{db_}"), "0-999");
    assert_eq!(r.status, 206);
    assert!(r.body == big[..1000]);
    // The altered manifest: 500.
    let r = c.get("/v2/plant-a/img/manifests/v1");
    assert_eq!(r.status, 500, "{r:?}");
    // Each failure is logged as an integrity error that names the blob.
    std::thread::sleep(Duration::from_millis(300));
    let log = reg.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("integrity") && l.contains("plant-a")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(&db_) && l.contains("integrity")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains(&ds) && l.contains("500")),
        "{log}"
    );
    // The check finds the altered manifest (it opens every manifest record)...
    let check = c.get("/admin/check");
    assert_eq!(check.status, 500, "{check:?}");
    let problems = check.json()["problems"].to_string();
    assert!(
        problems.contains(&md) && problems.contains("does not open"),
        "{problems}"
    );
    // ...and damaged data can still be deleted, after which the store is consistent.
    assert_eq!(c.delete(&format!("/v2/plant-a/app/blobs/{ds}")).status, 202);
    assert_eq!(
        c.delete(&format!("/v2/plant-a/img/manifests/{md}")).status,
        202
    );
    let check = c.get("/admin/check");
    assert!(check.json()["ok"].as_bool().unwrap(), "{check:?}");
}

#[test]
fn master_key_problems_refuse_to_start() {
    let site = Site::new("enc-master");
    let reg = site.start();
    let (_, r) = reg.client().push_blob("plant-a/app", &bytes(1, 10_000));
    assert_eq!(r.status, 201);
    drop(reg);
    let data = site.data();
    let data = data.to_str().unwrap();
    let config = site.config();
    let config = config.to_str().unwrap();
    // Another master key.
    let other = site.dir.path().join("other.key");
    assert!(outpost(&["key", "generate", other.to_str().unwrap()])
        .status
        .success());
    let err = site.refuses_with(&other);
    assert!(
        err.contains("does not open") && err.contains("plant-a"),
        "{err}"
    );
    // No master key at all.
    let err = refuses(&["--data-dir", data]);
    assert!(
        err.contains("no master key") && err.contains("masterKeyFile"),
        "{err}"
    );
    // A key file others can read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(site.key(), std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = refuses(&["--config", config]);
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(site.key(), std::fs::Permissions::from_mode(0o600)).unwrap();
    // A file that is not a key.
    let junk = site.dir.path().join("junk.key");
    std::fs::write(&junk, "not a key").unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = site.refuses_with(&junk);
    assert!(err.contains("64 hex digits"), "{err}");
    // Rules that name keys, on a fresh store, without a master key.
    let fresh = TempDir::new("enc-fresh");
    let cfg = fresh.path().join("c.json");
    std::fs::write(
        &cfg,
        r#"{"encryption": [{"repositories": "x/*", "key": "x"}]}"#,
    )
    .unwrap();
    let err = refuses(&[
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        fresh.path().to_str().unwrap(),
    ]);
    assert!(err.contains("no master key"), "{err}");
    // A rule that asks an existing key for another algorithm.
    let changed = site.dir.path().join("changed.json");
    let cfg = serde_json::json!({
        "masterKeyFile": site.key(),
        "encryption": [{"repositories": "plant-a/*", "key": "plant-a", "algorithm": "chacha20-poly1305"}],
    });
    std::fs::write(&changed, cfg.to_string()).unwrap();
    let err = refuses(&["--config", changed.to_str().unwrap(), "--data-dir", data]);
    assert!(err.contains("algorithm never changes"), "{err}");
    // Nor can a repository be created with a key.
    let out = outpost(&[
        "repo",
        "create",
        "x/y",
        "--key",
        "x",
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no master key"), "{}", text(&out));
    // The systemd credential is used when no masterKeyFile is set.
    let creds = site.dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::copy(site.key(), creds.join("outpost-master-key")).unwrap();
    std::fs::set_permissions(
        creds.join("outpost-master-key"),
        std::fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    let mut child = common::outpost()
        .args(["serve", "--data-dir", data, "--listen", "127.0.0.1:0"])
        .env("CREDENTIALS_DIRECTORY", &creds)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    while !line.contains("listening on") {
        line.clear();
        use std::io::BufRead;
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "exited without listening"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn master_key_rotation_one_command_and_two_steps() {
    let site = Site::new("enc-rotate");
    let mut reg = site.start();
    let layer = bytes(4, 80_000);
    let (d, _) = reg.client().push_blob("plant-b/app", &layer);
    assert_eq!(reg.terminate().code(), Some(0));
    let old = site.dir.path().join("old.key");
    std::fs::copy(site.key(), &old).unwrap();

    // One command: a new key replaces masterKeyFile, data keys are re-wrapped.
    let out = site.ok(&["key", "rotate"]);
    assert!(out.contains("rotated the master key"), "{out}");
    assert_ne!(
        std::fs::read(site.key()).unwrap(),
        std::fs::read(&old).unwrap()
    );
    let reg = site.start();
    assert!(reg.client().get(&format!("/v2/plant-b/app/blobs/{d}")).body == layer);
    drop(reg);
    let err = site.refuses_with(&old);
    assert!(err.contains("does not open"), "{err}");

    // Two steps (also the state a crash between them leaves): both keys open the store until
    // the first start, which keeps the key it started with.
    let current = site.dir.path().join("current.key");
    std::fs::copy(site.key(), &current).unwrap();
    let next = site.dir.path().join("next.key");
    assert!(outpost(&["key", "generate", next.to_str().unwrap()])
        .status
        .success());
    site.ok(&["key", "rotate", "--new-master-key", next.to_str().unwrap()]);
    let out = site.ok(&["key", "list"]);
    assert!(out.contains(" + "), "two master key ids: {out}");
    // Started with the current key: the rotation is undone, the new key no longer opens it.
    let reg = site.start();
    assert!(reg.log_text().contains("kept only master key id"));
    assert!(reg.client().get(&format!("/v2/plant-b/app/blobs/{d}")).body == layer);
    drop(reg);
    let err = site.refuses_with(&next);
    assert!(err.contains("does not open"), "{err}");
    // Again, and this time started with the new key: the rotation completes.
    site.ok(&["key", "rotate", "--new-master-key", next.to_str().unwrap()]);
    site.write_config(&next);
    let mut reg = site.start();
    assert!(reg.client().get(&format!("/v2/plant-b/app/blobs/{d}")).body == layer);
    reg.restart();
    assert!(reg.client().get(&format!("/v2/plant-b/app/blobs/{d}")).body == layer);
    drop(reg);
    let err = site.refuses_with(&current);
    assert!(err.contains("does not open"), "{err}");
    // Rotation needs the registry stopped: the store in use says so, not an address.
    let _reg = site.start();
    let out = site.fails(&["key", "rotate"]);
    assert!(out.contains("stop it first"), "{out}");
}

#[test]
fn crypto_erase_destroys_the_key_and_says_so() {
    let site = Site::new("enc-erase");
    let mut reg = site.start();
    let c = reg.client();
    let layer = bytes(8, 100_000);
    let (d, _) = c.push_blob("plant-a/app", &layer);
    let (_, r) = c.push_blob("plant-a/tools", &bytes(9, 5_000));
    assert_eq!(r.status, 201);
    let (_, r) = c.push_blob("public/app", &layer);
    assert_eq!(r.status, 201);
    let server = format!("http://{}", reg.addr);
    // Refused while another repository uses the key; nothing is deleted.
    let out = site.fails(&[
        "repo",
        "delete",
        "plant-a/app",
        "--erase",
        "--server",
        &server,
    ]);
    assert!(out.contains("also used by plant-a/tools"), "{out}");
    assert!(c.get(&format!("/v2/plant-a/app/blobs/{d}")).body == layer);
    // Refused for a plaintext repository.
    let out = site.cli(&[
        "repo",
        "delete",
        "public/app",
        "--erase",
        "--server",
        &server,
    ]);
    assert!(text(&out).contains("not encrypted"), "{}", text(&out));
    // A clone of the card, taken before the erase.
    reg.restart();
    let clone = site.dir.path().join("clone.redb");
    reg.kill();
    std::fs::copy(site.db(), &clone).unwrap();
    let mut reg = site.start();
    let server = format!("http://{}", reg.addr);
    site.ok(&["repo", "delete", "plant-a/tools", "--server", &server]);
    let out = site.ok(&[
        "repo",
        "delete",
        "plant-a/app",
        "--erase",
        "--server",
        &server,
    ]);
    assert!(out.contains("key \"plant-a\" destroyed"), "{out}");
    let c = reg.client();
    assert_eq!(c.get(&format!("/v2/plant-a/app/blobs/{d}")).status, 404);
    assert!(c.get(&format!("/v2/public/app/blobs/{d}")).body == layer);
    reg.restart();
    let c = reg.client();
    let keys = c.get("/admin/keys").json();
    assert!(!keys.to_string().contains("plant-a"), "{keys}");
    // The rule still names plant-a: a new push gets a new key of that name.
    assert_eq!(c.push_blob("plant-a/app", &bytes(10, 5_000)).1.status, 201);
    assert!(c.get("/admin/check").json()["ok"].as_bool().unwrap());
    drop(reg);
    // Rotating the master key afterwards makes the clone unreadable too.
    site.ok(&["key", "rotate"]);
    let clone_dir = site.dir.path().join("clone");
    std::fs::create_dir(&clone_dir).unwrap();
    std::fs::rename(&clone, clone_dir.join("outpost.redb")).unwrap();
    let err = refuses(&[
        "--config",
        site.config().to_str().unwrap(),
        "--data-dir",
        clone_dir.to_str().unwrap(),
    ]);
    assert!(
        err.contains("does not open") && err.contains("plant-a"),
        "{err}"
    );
}

#[test]
fn repositories_are_created_with_a_key_and_moved_explicitly() {
    let site = Site::new("enc-move");
    let reg = site.start();
    let c = reg.client();
    let server = format!("http://{}", reg.addr);
    // Explicit creation, online: a key no rule names, and plaintext despite a rule.
    site.ok(&[
        "repo",
        "create",
        "vendor/x",
        "--key",
        "vendor",
        "--algorithm",
        "chacha20-poly1305",
        "--server",
        &server,
    ]);
    site.ok(&["repo", "create", "plant-a/open", "--server", &server]);
    let out = site.fails(&["repo", "create", "vendor/x", "--server", &server]);
    assert!(out.contains("exists"), "{out}");
    let out = site.fails(&[
        "repo",
        "create",
        "vendor/y",
        "--key",
        "vendor",
        "--algorithm",
        "aes-256-gcm",
        "--server",
        &server,
    ]);
    assert!(out.contains("chacha20-poly1305"), "{out}");
    let (_, img, md) = push_secret_image(&c, "plant-a/open", 11);
    let sig = push_referrer(&c, "plant-a/open", &md, img.len());
    let keys = c.get("/admin/keys").json()["keys"].clone();
    let vendor = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "vendor")
        .unwrap();
    assert_eq!(vendor["algorithm"], "chacha20-poly1305");
    assert_eq!(vendor["repositories"], serde_json::json!(["vendor/x"]));
    assert!(
        !keys.to_string().contains("plant-a"),
        "plant-a/open is plaintext: {keys}"
    );
    // Moving needs the registry stopped.
    let out = site.cli(&["repo", "move", "plant-a/open", "--key", "plant-a"]);
    assert!(text(&out).contains("stop it first"), "{}", text(&out));
    drop(reg);
    // Stopped: create, delete and move work on the store directly, even with another
    // registry answering at the listen address given.
    let other_dir = TempDir::new("enc-move-other");
    let other = Registry::start(other_dir.path());
    let listen = other.addr.to_string();
    let listen = ["--listen", listen.as_str()];
    site.ok(&[
        &["repo", "create", "plant-c/offline", "--key", "plant-c"][..],
        &listen,
    ]
    .concat());
    let out = site.ok(&[&["key", "list"][..], &listen].concat());
    assert!(out.contains("plant-c/offline"), "{out}");
    site.ok(&[&["repo", "delete", "plant-c/offline"][..], &listen].concat());
    let out = site.ok(&[
        &["repo", "move", "plant-a/open", "--key", "plant-a"][..],
        &listen,
    ]
    .concat());
    assert_eq!(
        other.requests(),
        Vec::<String>::new(),
        "the other registry was reached"
    );
    assert!(out.contains("5 blob(s) encrypted"), "{out}");
    let mut reg = site.start();
    let c = reg.client();
    let r = c.get(&format!("/v2/plant-a/open/manifests/{md}"));
    assert_eq!((r.status, &r.body), (200, &img));
    let m: serde_json::Value = serde_json::from_slice(&img).unwrap();
    for l in m["layers"].as_array().unwrap() {
        let r = c.get(&format!(
            "/v2/plant-a/open/blobs/{}",
            l["digest"].as_str().unwrap()
        ));
        assert_eq!(r.status, 200);
        assert_eq!(sha256(&r.body), l["digest"].as_str().unwrap());
    }
    assert_referrer(&c, "plant-a/open", &md, &sig);
    let keys = c.get("/admin/keys").json().to_string();
    assert!(keys.contains("plant-a/open"), "{keys}");
    assert!(c.get("/admin/check").json()["ok"].as_bool().unwrap());
    assert_eq!(c.stored_blobs().0, 5, "the plaintext copies are gone");
    // And back to plaintext.
    reg.terminate();
    let out = site.ok(&["repo", "move", "plant-a/open", "--plaintext"]);
    // It says what it did: decrypted, not re-encrypted.
    assert!(
        out.contains("to plaintext: 5 blob(s) decrypted") && !out.contains("encrypted ("),
        "{out}"
    );
    let reg = site.start();
    let r = reg
        .client()
        .get(&format!("/v2/plant-a/open/manifests/{md}"));
    assert_eq!((r.status, &r.body), (200, &img));
    assert_referrer(&reg.client(), "plant-a/open", &md, &sig);
    assert!(reg.client().get("/admin/check").json()["ok"]
        .as_bool()
        .unwrap());
}

#[test]
fn a_version_1_store_is_migrated_as_plaintext() {
    let dir = TempDir::new("enc-v1");
    let db = dir.path().join("outpost.redb");
    let content = b"content stored by an earlier build";
    let digest = sha256(content);
    let manifest = image_manifest((&digest, content.len()), &[], "");
    {
        let db = redb::Database::create(&db).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut meta = tx
                .open_table(TableDefinition::<&str, u64>::new("meta"))
                .unwrap();
            meta.insert("schema_version", 1).unwrap();
            meta.insert("next_repo_id", 2).unwrap();
            meta.insert("next_blob_id", 3).unwrap();
            tx.open_table(TableDefinition::<&str, u64>::new("repos"))
                .unwrap()
                .insert("old/app", 1)
                .unwrap();
            tx.open_table(TableDefinition::<&str, (&str, u64, u64, u64)>::new(
                "uploads",
            ))
            .unwrap()
            .insert(
                "0123456789abcdef0123456789abcdef",
                ("old/app", 2, 0, 4_000_000_000),
            )
            .unwrap();
            tx.open_table(BLOBS)
                .unwrap()
                .insert((0, digest.as_str()), (1, content.len() as u64, 1))
                .unwrap();
            tx.open_table(CHUNKS)
                .unwrap()
                .insert((1, 0), content.as_slice())
                .unwrap();
            tx.open_table(TableDefinition::<(u64, &str), (u8, u64)>::new("links"))
                .unwrap()
                .insert((1, digest.as_str()), (0, 0))
                .unwrap();
            // A manifest listing it (record: version 1, media type, no subject, body).
            let mut record = vec![1u8];
            record.extend_from_slice(&(OCI_MANIFEST.len() as u16).to_le_bytes());
            record.extend_from_slice(OCI_MANIFEST.as_bytes());
            record.push(0);
            record.extend_from_slice(&manifest);
            tx.open_table(TableDefinition::<(u64, &str), &[u8]>::new("manifests"))
                .unwrap()
                .insert((1, sha256(&manifest).as_str()), record.as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let reg = Registry::start(dir.path());
    let c = reg.client();
    assert!(
        reg.log_text()
            .contains("migrated the store to schema version 3 (references of 1 manifest(s)"),
        "{}",
        reg.log_text()
    );
    // The references were recorded: a collector pass keeps the blob the manifest lists
    // (linked in 1970, far beyond the grace period).
    let report = c.req("POST", "/admin/gc", &[], Body::None).json();
    assert_eq!(report["blobLinks"], serde_json::json!([]), "{report}");
    assert_eq!(
        c.get(&format!("/v2/old/app/manifests/{}", sha256(&manifest)))
            .body,
        manifest
    );
    assert_eq!(c.get(&format!("/v2/old/app/blobs/{digest}")).body, content);
    let r = c.get("/v2/old/app/blobs/uploads/0123456789abcdef0123456789abcdef");
    assert_eq!(r.status, 204, "the open upload survived: {r:?}");
    assert!(c.get("/admin/check").json()["ok"].as_bool().unwrap());
    assert_eq!(
        c.get("/v2/_catalog").json()["repositories"],
        serde_json::json!(["old/app"])
    );
    // Version 4: the store-wide quota counter was counted from what was there (the blob and
    // the manifest record).
    let record = 1 + 2 + OCI_MANIFEST.len() + 1 + manifest.len();
    let quotas = c.get("/admin/stats").json()["quotas"].clone();
    assert_eq!(quotas[0]["quota"], "maxStoreSize", "{quotas}");
    assert_eq!(quotas[0]["used"], content.len() + record, "{quotas}");
}

#[test]
fn a_move_killed_midway_leaves_the_repository_whole() {
    let site = Site::new("enc-move-kill");
    let mut reg = site.start();
    let c = reg.client();
    let big = bytes(21, 48 << 20);
    let (d, r) = c.push_blob("plain/app", &big);
    assert_eq!(r.status, 201);
    let (_, img, md) = push_secret_image(&c, "plain/app", 22);
    assert_eq!(reg.terminate().code(), Some(0));
    let config = site.config();
    let mut done = false;
    for delay_ms in [30, 120, 400] {
        let mut child = common::outpost()
            .args(["repo", "move", "plain/app", "--key", "plant-a", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        done |= child.wait().unwrap().success();
        // Whatever the moment: the repository is whole, under one key or the other.
        let reg = site.start();
        let c = reg.client();
        assert!(c.get("/admin/check").json()["ok"].as_bool().unwrap());
        assert_eq!(sha256(&c.get(&format!("/v2/plain/app/blobs/{d}")).body), d);
        let r = c.get(&format!("/v2/plain/app/manifests/{md}"));
        assert_eq!((r.status, &r.body), (200, &img));
    }
    // Finished now (if no attempt did): staged copies of killed attempts are no obstacle.
    let out = site.cli(&["repo", "move", "plain/app", "--key", "plant-a"]);
    assert!(
        out.status.success() || (done && text(&out).contains("already stored")),
        "{}",
        text(&out)
    );
    let reg = site.start();
    let c = reg.client();
    let keys = c.get("/admin/keys").json().to_string();
    assert!(keys.contains("plain/app"), "{keys}");
    assert_eq!(sha256(&c.get(&format!("/v2/plain/app/blobs/{d}")).body), d);
    assert!(c.get("/admin/check").json()["ok"].as_bool().unwrap());
}
