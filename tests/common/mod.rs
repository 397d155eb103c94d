//! Test harness: runs the real `outpost` binary on an ephemeral 127.0.0.1 port and talks
//! HTTP/1.1 to it over plain sockets, so tests control every byte (ranges, chunked bodies,
//! truncated requests, hostile headers).
#![allow(dead_code)]

pub mod oci;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "outpost-test-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    /// A scratch directory on the disk of the build's target directory (the system temp
    /// directory may be a tmpfs, where writes and allocated blocks cannot be measured).
    pub fn on_disk(tag: &str) -> TempDir {
        let p =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A command running the `outpost` binary under test: `$OUTPOST_BIN` if set (e.g. a cross
/// build), else the one cargo built, started through `$OUTPOST_RUNNER` if set (e.g.
/// `qemu-arm -L /usr/arm-linux-gnueabihf`: an emulated process cannot exec a foreign binary
/// itself, there is no binfmt_misc).
pub fn outpost() -> Command {
    let bin = std::env::var_os("OUTPOST_BIN")
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_outpost").into());
    let runner = std::env::var("OUTPOST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// A time bound for what should happen promptly: `d` natively, five times `d` when the binary
/// runs under an emulator (`$OUTPOST_RUNNER`, e.g. qemu in cross/test.sh).
pub fn bound(d: Duration) -> Duration {
    if std::env::var("OUTPOST_RUNNER").is_ok_and(|r| !r.trim().is_empty()) {
        d * 5
    } else {
        d
    }
}

/// `outpost serve --listen LISTEN --data-dir DATA` logging at info to a piped stderr.
pub fn serve(data: &Path, listen: &str) -> Command {
    let mut c = outpost();
    c.args(["serve", "--listen", listen, "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// A running registry process.
pub struct Registry {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
    data: PathBuf,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl Registry {
    /// Starts `outpost serve` on 127.0.0.1:0 with its store in `data`.
    pub fn start(data: &Path) -> Registry {
        Registry::start_with(data, &[])
    }

    pub fn start_with(data: &Path, extra: &[&str]) -> Registry {
        Registry::start_env(data, extra, &[])
    }

    /// `start_with`, with environment variables `env` (e.g. `OUTPOST_CLOCK_OFFSET`).
    pub fn start_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Registry {
        let mut child = serve(data, "127.0.0.1:0")
            .args(extra)
            .envs(env.iter().copied())
            .spawn()
            .expect("start outpost");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap().to_owned();
                    if let Some(t) = tx.take() {
                        let _ = t.send(addr);
                    }
                }
                log2.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("registry did not start; log: {:?}", log.lock().unwrap());
            }
        };
        Registry {
            child,
            addr,
            log,
            data: data.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// SIGKILL: a crash at an arbitrary point.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        wait_timeout(&mut self.child, Duration::from_secs(30))
            .expect("registry did not stop after SIGTERM")
    }

    /// Stops (SIGTERM) and starts again on the same store; returns the new address.
    pub fn restart(&mut self) {
        let st = self.terminate();
        assert!(st.success(), "exit status {st:?}");
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let fresh = Registry::start_env(&self.data, &extra, &env);
        let old = std::mem::replace(self, fresh);
        drop(old);
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The log once it holds `needle` (lines reach it through a pipe, a moment after the
    /// answer the client already has); panics with the log if it does not within 10 s.
    pub fn log_with(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            if log.contains(needle) {
                return log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in the log: {log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The requests it served so far, as logged (a line each: "METHOD PATH STATUS TIME").
    /// Ends with a request of its own and waits for that line, so that lines still on their
    /// way through the pipe are not missed.
    pub fn requests(&self) -> Vec<String> {
        const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
        static N: AtomicUsize = AtomicUsize::new(0);
        let marker = format!("/requests-marker-{}", N.fetch_add(1, Ordering::SeqCst));
        self.client().get(&marker);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let lines: Vec<String> = self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| l.split_once("] ").map(|(_, msg)| msg))
                .filter(|msg| {
                    let mut words = msg.split(' ');
                    words.next().is_some_and(|m| METHODS.contains(&m))
                        && words.next().is_some_and(|p| p.starts_with('/'))
                })
                .map(str::to_owned)
                .collect();
            if let Some(end) = lines.iter().position(|l| l.contains(&marker)) {
                let ours = |l: &&String| l.contains(" /requests-marker-");
                return lines[..end].iter().filter(|l| !ours(l)).cloned().collect();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{marker} not logged: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A request body.
pub enum Body<'a> {
    None,
    Bytes(&'a [u8]),
    /// Sent with `Transfer-Encoding: chunked`, one HTTP chunk per slice.
    Chunked(Vec<&'a [u8]>),
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The OCI error code of an error response.
    pub fn code(&self) -> String {
        assert!(
            self.header("content-type").unwrap_or("").contains("json"),
            "{self:?}"
        );
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// A one-request-per-connection HTTP/1.1 client.
#[derive(Clone, Copy)]
pub struct Client {
    pub addr: SocketAddr,
    /// An `Authorization` header sent with every request.
    pub auth: Option<&'static str>,
    /// The local address connections come from (e.g. 127.0.0.2); None: the system's choice.
    pub from: Option<std::net::Ipv4Addr>,
}

impl Client {
    /// A client of the registry at `addr`.
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            auth: None,
            from: None,
        }
    }

    /// This client, connecting from local address `ip` (any of 127.0.0.0/8 on loopback).
    pub fn bound_to(self, ip: std::net::Ipv4Addr) -> Client {
        Client {
            from: Some(ip),
            ..self
        }
    }

    /// A connection to the registry, from `from` if set.
    fn connect(&self) -> TcpStream {
        let Some(ip) = self.from else {
            return TcpStream::connect(self.addr).expect("connect");
        };
        let SocketAddr::V4(to) = self.addr else {
            panic!("bound_to needs an IPv4 registry address");
        };
        use std::os::fd::FromRawFd;
        let sockaddr = |a: std::net::SocketAddrV4| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: a fresh socket, bound and connected with valid sockaddr_in values; owned by
        // the TcpStream from then on.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let stream = TcpStream::from_raw_fd(fd);
            let local = sockaddr(std::net::SocketAddrV4::new(ip, 0));
            let r = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len);
            assert_eq!(r, 0, "bind {ip}: {}", std::io::Error::last_os_error());
            let remote = sockaddr(to);
            let r = libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len);
            assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
            stream
        }
    }

    /// This client, sending `authorization` (e.g. `Basic ...`, `Bearer ...`) with each request.
    pub fn with_auth(self, authorization: &str) -> Client {
        Client {
            auth: Some(Box::leak(authorization.to_owned().into_boxed_str())),
            ..self
        }
    }

    /// This client with Basic credentials.
    pub fn as_user(self, user: &str, password: &str) -> Client {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.with_auth(&format!("Basic {b64}"))
    }

    pub fn get(&self, path: &str) -> Resp {
        self.req("GET", path, &[], Body::None)
    }

    pub fn head(&self, path: &str) -> Resp {
        self.req("HEAD", path, &[], Body::None)
    }

    pub fn delete(&self, path: &str) -> Resp {
        self.req("DELETE", path, &[], Body::None)
    }

    pub fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Body) -> Resp {
        let mut s = self.connect();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        if let Some(a) = self.auth {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        match &body {
            Body::None => {
                if matches!(method, "PUT" | "POST" | "PATCH") {
                    head.push_str("Content-Length: 0\r\n");
                }
            }
            Body::Bytes(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
            Body::Chunked(_) => head.push_str("Transfer-Encoding: chunked\r\n"),
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        match body {
            Body::None => {}
            Body::Bytes(b) => {
                let _ = s.write_all(b);
            }
            Body::Chunked(parts) => {
                for p in parts {
                    let _ = s.write_all(format!("{:x}\r\n", p.len()).as_bytes());
                    let _ = s.write_all(p);
                    let _ = s.write_all(b"\r\n");
                }
                let _ = s.write_all(b"0\r\n\r\n");
            }
        }
        read_response(&mut BufReader::new(s), method == "HEAD")
    }

    /// Opens an upload session in `repo`; returns its location.
    pub fn start_upload(&self, repo: &str) -> String {
        let r = self.req(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            Body::None,
        );
        assert_eq!(r.status, 202, "{r:?}");
        r.header("Location").unwrap().to_owned()
    }

    /// Streams `data` into a new session of `repo` in one chunked PATCH of uneven pieces (as
    /// clients send it), then finishes it with its digest; returns the finishing response.
    pub fn push_streamed(&self, repo: &str, data: &[u8]) -> Resp {
        let loc = self.start_upload(repo);
        let r = self.req(
            "PATCH",
            &loc,
            &[],
            Body::Chunked(data.chunks(100_003).collect()),
        );
        assert_eq!(r.status, 202, "{r:?}");
        self.req(
            "PUT",
            &format!("{loc}?digest={}", sha256(data)),
            &[],
            Body::None,
        )
    }

    /// GET `path` with a `Range: bytes=…` header.
    pub fn get_range(&self, path: &str, range: &str) -> Resp {
        self.req(
            "GET",
            path,
            &[("Range", &format!("bytes={range}"))],
            Body::None,
        )
    }

    /// (blobs stored, their bytes) as `/admin/stats` reports them.
    pub fn stored_blobs(&self) -> (u64, u64) {
        let s = self.get("/admin/stats").json()["store"].clone();
        (
            s["blobs"].as_u64().expect("blobs"),
            s["blobBytes"].as_u64().expect("blobBytes"),
        )
    }

    /// `POST /v2/TARGET/blobs/uploads/?mount=DIGEST[&from=FROM]`: a cross-repository mount
    /// (201), or the upload session a refused one gives (202).
    pub fn mount(&self, target: &str, digest: &str, from: Option<&str>) -> Resp {
        let q = match from {
            Some(f) => format!("mount={digest}&from={f}"),
            None => format!("mount={digest}"),
        };
        self.req(
            "POST",
            &format!("/v2/{target}/blobs/uploads/?{q}"),
            &[],
            Body::None,
        )
    }

    /// POST + PUT ?digest= with the whole blob; returns the final response.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> (String, Resp) {
        let digest = sha256(data);
        let r = self.req(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            &[],
            Body::Bytes(data),
        );
        (digest, r)
    }

    /// PUT a manifest under `reference` with `media_type`.
    pub fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Resp {
        self.req(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            Body::Bytes(body),
        )
    }
}

/// Reads one response (the connection is closed after it).
pub fn read_response(r: &mut impl BufRead, head_only: bool) -> Resp {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if !head_only && status != 204 && status != 304 {
        if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut sz = String::new();
                r.read_line(&mut sz).unwrap();
                let n = usize::from_str_radix(sz.trim(), 16).unwrap();
                if n == 0 {
                    break;
                }
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk).unwrap();
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = get("content-length") {
            body.resize(n.parse().unwrap(), 0);
            r.read_exact(&mut body)
                .expect("body as long as Content-Length");
        } else {
            r.read_to_end(&mut body).unwrap();
        }
    }
    Resp {
        status,
        headers,
        body,
    }
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(data);
    format!(
        "sha256:{}",
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Bytes process `pid` has caused to be written to storage (`/proc/PID/io`).
pub fn write_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// An OCI image manifest over a config and layers (each given as (digest, size)).
pub fn image_manifest(config: (&str, usize), layers: &[(&str, usize)], extra: &str) -> Vec<u8> {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, s)| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{s}}}"#))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{}]{extra}}}"#,
        config.0,
        config.1,
        layers.join(",")
    )
    .into_bytes()
}

/// Pushes a config and `n` layers into `repo` and returns the manifest bytes referencing them.
pub fn push_image(c: &Client, repo: &str, seed: u64, n: usize) -> Vec<u8> {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let (cd, r) = c.push_blob(repo, &config);
    assert_eq!(r.status, 201, "{r:?}");
    let mut layers = Vec::new();
    for i in 0..n {
        let data = bytes(seed * 100 + i as u64, 1000 + i * 10);
        let (d, r) = c.push_blob(repo, &data);
        assert_eq!(r.status, 201);
        layers.push((d, data.len()));
    }
    let refs: Vec<(&str, usize)> = layers.iter().map(|(d, s)| (d.as_str(), *s)).collect();
    image_manifest((&cd, config.len()), &refs, "")
}

/// Pushes a small image (`push_image` with one layer) into `repo:tag`; returns its manifest.
pub fn push_tagged(c: &Client, repo: &str, tag: &str, seed: u64) -> Vec<u8> {
    let m = push_image(c, repo, seed, 1);
    let r = c.put_manifest(repo, tag, OCI_MANIFEST, &m);
    assert_eq!(r.status, 201, "{r:?}");
    m
}

/// Writes a new master key and a config naming it with encryption `rules` into `dir`;
/// returns the config's path (for `--config`).
pub fn encryption_config(dir: &Path, rules: serde_json::Value) -> PathBuf {
    let key = dir.join("master.key");
    let out = outpost()
        .args(["key", "generate"])
        .arg(&key)
        .output()
        .expect("run outpost key generate");
    assert!(out.status.success(), "{out:?}");
    let cfg = dir.join("outpost.json");
    // Port 0 (as everywhere in the tests): no command can find a registry by this address,
    // so none reaches one the test did not start (e.g. a developer's on 127.0.0.1:5000).
    let config =
        serde_json::json!({ "listen": "127.0.0.1:0", "masterKeyFile": key, "encryption": rules });
    std::fs::write(&cfg, config.to_string()).unwrap();
    cfg
}

/// Runs `outpost ARGS` with `stdin` written to it (a command that fails before reading its
/// stdin closes the pipe: not an error here).
pub fn outpost_stdin(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = outpost()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run outpost");
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().expect("outpost output")
}

/// A command's stdout then stderr, as text.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A tmpfs of `mib` MiB mounted on a fresh directory, unmounted on drop.
pub struct SmallDisk(pub TempDir);

impl SmallDisk {
    pub fn mount(mib: u32) -> Option<SmallDisk> {
        let dir = TempDir::new("disk");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(SmallDisk(dir));
        }
        assert!(
            std::env::var("CI").is_err(),
            "CI must be able to mount a tmpfs (run as root)"
        );
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        None
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Bytes available to unprivileged writers on the filesystem holding `path`.
pub fn fs_free(path: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs only writes into the zeroed struct; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

/// A self-signed certificate for 127.0.0.1 from `outpost tls self-signed`, written into
/// `dir`; returns (certificate, key) paths.
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let out = outpost_stdin(
        &[
            "tls",
            "self-signed",
            "--host",
            "127.0.0.1",
            "--out",
            dir.to_str().unwrap(),
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out));
    (dir.join("outpost.crt"), dir.join("outpost.key"))
}
