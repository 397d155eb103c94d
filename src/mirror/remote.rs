//! A registry over HTTP(S), through `ureq`: an upstream to sync or cache from, or a running
//! Outpost to import into and export from. Speaks basic auth and Docker's bearer-token flow
//! (what Docker Hub, distribution, Harbor, zot and ECR-compatible registries answer with),
//! follows blob redirects without forwarding credentials, and resumes a blob whose
//! connection drops with a Range request.

use super::{BlobReader, Fetched, MirrorError, Result, Sink, Source};
use crate::digest::{Digest, Hasher};
use crate::registry::manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use ureq::http::{Request, Response};
use ureq::{AsSendBody, Body};

/// Manifest types we ask for.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest or token answer read.
const SMALL_LIMIT: u64 = 8 << 20;

/// Reconnects tried for one blob whose connection dropped, before giving up.
const RESUMES: u32 = 3;

/// A registry's base URL and credentials.
pub struct Remote {
    agent: ureq::Agent,
    /// `scheme://host[:port]`.
    base: String,
    /// Basic credentials, used directly or to get tokens.
    creds: Option<(String, String)>,
    /// `Authorization` values by scope (repository and actions).
    auth: Mutex<HashMap<String, String>>,
    /// Upload locations a refused mount left open, by (repository, digest).
    pending: Mutex<HashMap<(String, String), String>>,
}

/// The HTTP client of outpost's outgoing requests (upstream registries, notification
/// endpoints): rustls on ring, trusting the CA certificates in `ca_file` (PEM) instead of the
/// built-in roots if given; an answer must start within `timeout`. Statuses are answers,
/// not errors.
pub fn agent(ca_file: Option<&Path>, timeout: Duration) -> Result<ureq::Agent, String> {
    let certs = trusted_roots(ca_file)?;
    let tls = ureq::tls::TlsConfig::builder()
        .unversioned_rustls_crypto_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    Ok(ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
        .timeout_recv_response(Some(timeout))
        .max_redirects(5)
        .user_agent(concat!("outpost/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls.build())
        .build()
        .new_agent())
}

impl Remote {
    /// A transport failure, naming the registry it was talking to.
    fn net(&self, what: &str, e: ureq::Error) -> MirrorError {
        MirrorError::new(format!("{what} at {}: {e}", self.base))
    }

    /// A client of the registry at `base` (`http(s)://host[:port]`), trusting the CA
    /// certificates in `ca_file` (PEM) instead of the built-in roots if given.
    pub fn new(
        base: &str,
        creds: Option<(String, String)>,
        ca_file: Option<&Path>,
    ) -> Result<Remote, String> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!(
                "{base}: an upstream URL starts with http:// or https://"
            ));
        }
        let agent = agent(ca_file, Duration::from_secs(60))?;
        Ok(Remote {
            agent,
            base,
            creds,
            auth: Mutex::default(),
            pending: Mutex::default(),
        })
    }

    /// The base URL, for messages.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The user signing in, if any.
    pub fn user(&self) -> Option<&str> {
        self.creds.as_ref().map(|c| c.0.as_str())
    }

    /// The Basic `Authorization` value of the credentials, if any.
    fn basic(&self) -> Option<String> {
        use base64::Engine as _;
        self.creds.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
    }

    /// One request to a running Outpost's admin API (`path` under the base URL) with a JSON
    /// `body`, waiting up to `wait` for the answer: its status and body. The credentials go
    /// with the first request: the admin API signs in Basic admins without a challenge.
    pub fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        wait: Duration,
    ) -> Result<(u16, Vec<u8>), String> {
        let mut req = Request::builder()
            .method(method)
            .uri(self.url(path))
            .header("Content-Type", "application/json");
        if let Some(b) = self.basic() {
            req = req.header("Authorization", b);
        }
        let resp = match body {
            Some(b) => req
                .body(b.as_bytes())
                .map_err(ureq::Error::from)
                .and_then(|r| self.run_waiting(r, wait)),
            None => req
                .body(())
                .map_err(ureq::Error::from)
                .and_then(|r| self.run_waiting(r, wait)),
        };
        let mut resp = resp.map_err(|e| {
            let e = e.to_string();
            // An untrusted certificate is the usual first failure against a self-signed one;
            // a scheme that is not the server's fails with words that do not say so.
            let hint = if e.contains("not valid for name") || e.contains("NotValidForName") {
                " (the certificate does not name this host: use a name or address it was made \
                 for, e.g. a --host of outpost tls self-signed)"
            } else if e.contains("certificate") || e.contains("UnknownIssuer") {
                " (give --ca-file FILE naming the CA that signed its certificate, e.g. the \
                 outpost.crt of outpost tls self-signed)"
            } else if e.contains("http parse fail") && self.base.starts_with("http://") {
                " (does it serve HTTPS? then give --server https://…)"
            } else if e.contains("corrupt message") && self.base.starts_with("https://") {
                " (does it serve plain HTTP? then give --server http://…)"
            } else {
                ""
            };
            format!("cannot reach outpost at {}: {e}{hint}", self.base)
        })?;
        let body = resp
            .body_mut()
            .with_config()
            .limit(SMALL_LIMIT)
            .read_to_vec()
            .map_err(|e| format!("reading the answer of outpost at {}: {e}", self.base))?;
        Ok((resp.status().as_u16(), body))
    }

    /// Runs `req`, waiting up to `wait` for the response (a gc or scrub pass answers when done).
    fn run_waiting<B: AsSendBody>(
        &self,
        req: Request<B>,
        wait: Duration,
    ) -> Result<Response<Body>, ureq::Error> {
        let req = self
            .agent
            .configure_request(req)
            .timeout_recv_response(Some(wait))
            // An admin answer is small JSON: once its head came, its body follows at once (a
            // server that stalls it must not hang the command).
            .timeout_recv_body(Some(Duration::from_secs(30)))
            .build();
        self.agent.run(req)
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// Sends a request, answering one auth challenge: basic credentials, or a bearer token
    /// for `scope` from the challenge's realm. `body` is called again for the retry.
    fn send<B: AsSendBody>(
        &self,
        method: &str,
        path: &str,
        scope: &str,
        headers: &[(&str, String)],
        mut body: impl FnMut() -> B,
    ) -> Result<Response<Body>, ureq::Error> {
        let cached = self
            .auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(scope)
            .cloned();
        let build = |auth: Option<&str>| {
            let mut req = Request::builder().method(method).uri(self.url(path));
            for (k, v) in headers {
                req = req.header(*k, v.as_str());
            }
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            req
        };
        let resp = self.agent.run(build(cached.as_deref()).body(body())?)?;
        if resp.status() != 401 {
            return Ok(resp);
        }
        let challenge = header(&resp, "www-authenticate").unwrap_or("").to_owned();
        let Some(auth) = self.answer(&challenge, scope)? else {
            return Ok(resp);
        };
        self.auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(scope.to_owned(), auth.clone());
        self.agent.run(build(Some(&auth)).body(body())?)
    }

    /// The Authorization value answering `challenge`, if we can.
    fn answer(&self, challenge: &str, scope: &str) -> Result<Option<String>, ureq::Error> {
        let basic = self.basic();
        let (kind, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if kind.eq_ignore_ascii_case("basic") {
            return Ok(basic);
        }
        if !kind.eq_ignore_ascii_case("bearer") {
            return Ok(None);
        }
        let params = parse_params(params);
        let Some(realm) = params.get("realm") else {
            return Ok(None);
        };
        let mut url = format!("{realm}?");
        if let Some(s) = params.get("service") {
            url.push_str(&format!("service={}&", crate::http::percent_encode(s)));
        }
        let scope = params.get("scope").map_or(scope, String::as_str);
        if !scope.is_empty() {
            url.push_str(&format!("scope={}", crate::http::percent_encode(scope)));
        }
        let mut req = Request::builder().method("GET").uri(url);
        if let Some(b) = &basic {
            req = req.header("Authorization", b.as_str());
        }
        let mut resp = self.agent.run(req.body(())?)?;
        if resp.status() != 200 {
            return Ok(None);
        }
        let v: serde_json::Value = serde_json::from_slice(
            &resp
                .body_mut()
                .with_config()
                .limit(SMALL_LIMIT)
                .read_to_vec()?,
        )
        .unwrap_or_default();
        Ok(v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .map(|t| format!("Bearer {t}")))
    }

    fn scope(repo: &str, push: bool) -> String {
        format!(
            "repository:{repo}:{}",
            if push { "pull,push" } else { "pull" }
        )
    }

    /// A non-success answer as an error naming the registry's message.
    fn refused(&self, what: &str, mut resp: Response<Body>) -> MirrorError {
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 10)
            .read_to_vec()
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        // The upstream's words end up in logs and on terminals: printable, and not many.
        let msg: String = v["errors"][0]["message"]
            .as_str()
            .or(v["errors"][0]["code"].as_str())
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        let hint = match status {
            401 => " (give credentials: username and passwordFile, or --user)",
            403 => " (the credentials may not do this)",
            _ => "",
        };
        let m = format!("{what}: {} answered {status} {msg}{hint}", self.base);
        let mut e = if status == 400 && v["errors"][0]["code"] == "DIGEST_INVALID" {
            MirrorError::integrity(m)
        } else {
            MirrorError::new(m)
        };
        e.status = Some(status);
        e
    }

    /// A `method` (GET or HEAD) request for manifest `reference` of `repo`.
    fn manifest_request(
        &self,
        method: &str,
        repo: &str,
        reference: &str,
    ) -> Result<Response<Body>> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let scope = Self::scope(repo, false);
        self.send(method, &path, &scope, &[("Accept", ACCEPT.into())], || ())
            .map_err(|e| self.net(&path, e))
    }

    /// The digest `reference` of `repo` resolves to (HEAD), if the registry has it.
    pub fn head_manifest(&self, repo: &str, reference: &str) -> Result<Option<Digest>> {
        let resp = self.manifest_request("HEAD", repo, reference)?;
        match resp.status().as_u16() {
            200 => Ok(header(&resp, "docker-content-digest").and_then(|d| Digest::parse(d).ok())),
            404 => Ok(None),
            _ => Err(self.refused(&format!("manifest {repo}:{reference}"), resp)),
        }
    }

    /// Every tag of `repo` (following `Link` pagination).
    pub fn tags(&self, repo: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut path = format!("/v2/{repo}/tags/list?n=1000");
        for _ in 0..1000 {
            let mut resp = self
                .send("GET", &path, &Self::scope(repo, false), &[], || ())
                .map_err(|e| self.net(&path, e))?;
            if resp.status() != 200 {
                return Err(self.refused(&format!("tags of {repo}"), resp));
            }
            let next = header(&resp, "link")
                .and_then(|l| l.split_once('<'))
                .and_then(|(_, r)| r.split_once('>'))
                .map(|(u, _)| u.to_owned());
            let body = small_body(&mut resp, &path)?;
            let v: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| MirrorError::new(format!("tags of {repo}: {e}")))?;
            out.extend(
                v["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_owned)),
            );
            match next {
                Some(n) => path = n,
                None => break,
            }
        }
        Ok(out)
    }

    /// The size of blob `digest` of `repo` (HEAD), if the registry has it.
    pub fn head_blob(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self
            .send("HEAD", &path, &Self::scope(repo, false), &[], || ())
            .map_err(|e| self.net(&path, e))?;
        match resp.status().as_u16() {
            200 => header(&resp, "content-length")
                .and_then(|v| v.parse::<u64>().ok())
                .map(Some)
                .ok_or_else(|| MirrorError::new(format!("{path}: a HEAD without Content-Length"))),
            404 => Ok(None),
            _ => Err(self.refused(&path, resp)),
        }
    }

    /// GET of bytes `start` to `last` (inclusive) of blob `digest`: the response and the
    /// bytes it carries, checked to be that range.
    pub fn blob_range(
        &self,
        repo: &str,
        digest: &Digest,
        start: u64,
        last: u64,
    ) -> Result<Response<Body>> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let range = vec![("Range", format!("bytes={start}-{last}"))];
        let resp = self
            .send("GET", &path, &Self::scope(repo, false), &range, || ())
            .map_err(|e| self.net(&path, e))?;
        if resp.status() != 206 {
            return Err(self.refused(&path, resp));
        }
        let want = format!("bytes {start}-{last}/");
        if !header(&resp, "content-range").is_some_and(|v| v.starts_with(&want)) {
            return Err(MirrorError::new(format!(
                "{path}: asked for bytes {start}-{last}, got another range"
            )));
        }
        Ok(resp)
    }

    /// GET of blob `digest` from `offset`: the response, checked to start there.
    pub fn blob_response(
        &self,
        repo: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<(Response<Body>, u64)> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let mut headers = Vec::new();
        if offset > 0 {
            headers.push(("Range", format!("bytes={offset}-")));
        }
        let resp = self
            .send("GET", &path, &Self::scope(repo, false), &headers, || ())
            .map_err(|e| self.net(&path, e))?;
        match resp.status().as_u16() {
            200 => Ok((resp, 0)),
            206 => {
                let start = header(&resp, "content-range")
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(offset) {
                    return Err(MirrorError::new(format!(
                        "{path}: asked for bytes from {offset}, got another range"
                    )));
                }
                Ok((resp, offset))
            }
            _ => Err(self.refused(&path, resp)),
        }
    }

    /// Sends `size` bytes of `r` to `location` as blob `digest` of `repo`, hashing them on
    /// the way; the registry verifies again before it commits.
    fn upload(
        &self,
        repo: &str,
        location: &str,
        digest: &Digest,
        size: u64,
        r: &mut dyn Read,
    ) -> Result<()> {
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        let mut hashing = HashingReader {
            inner: r,
            hasher: Some(Hasher::new(digest.algorithm())),
            got: None,
            read: 0,
        };
        let headers = [
            ("Content-Type", "application/octet-stream".to_owned()),
            ("Content-Length", size.to_string()),
        ];
        // One pass only: a streamed body cannot be sent twice; the POST got the token.
        let scope = Self::scope(repo, true);
        let auth = self
            .auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&scope)
            .cloned();
        let resp = {
            let mut req = Request::builder().method("PUT").uri(self.url(&url));
            for (k, v) in &headers {
                req = req.header(*k, v.as_str());
            }
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            match req.body(ureq::SendBody::from_reader(&mut hashing)) {
                Ok(r) => self.agent.run(r),
                Err(e) => Err(e.into()),
            }
        };
        let got = hashing
            .got
            .take()
            .or_else(|| hashing.hasher.take().map(Hasher::finish));
        let resp = resp.map_err(|e| self.net(&format!("blob {digest}"), e))?;
        if got.as_ref() != Some(digest) && hashing.read == size {
            return Err(MirrorError::integrity(format!(
                "blob {digest}: content has digest {}: refused (tampered or corrupt)",
                got.map_or("?".into(), |g| g.to_string())
            )));
        }
        if resp.status() != 201 {
            return Err(self.refused(&format!("blob {digest}"), resp));
        }
        Ok(())
    }
}

/// System CA bundles, by distribution (the first that exists is used).
const SYSTEM_ROOTS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",             // openSUSE
    "/etc/ssl/cert.pem",                  // others
];

/// The CA certificates to trust: `ca_file`'s, else the system's bundle. Not compiled in:
/// a gateway's roots are updated with its OS (or pinned with caFile), and Mozilla's list
/// would cost the ARM binaries a quarter of a megabyte.
fn trusted_roots(ca_file: Option<&Path>) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let (path, given) = match ca_file {
        Some(p) => (p.to_owned(), true),
        None => match SYSTEM_ROOTS.iter().map(Path::new).find(|p| p.exists()) {
            Some(p) => (p.to_owned(), false),
            // Plain-HTTP upstreams still work; an https one fails its handshake, and says so.
            None => return Ok(Vec::new()),
        },
    };
    let pem =
        std::fs::read(&path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() && given {
        return Err(format!(
            "CA file {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// Header `name` of `resp`, if present and text.
fn header<'r>(resp: &'r Response<Body>, name: &str) -> Option<&'r str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A whole small response body (manifests, tag lists, tokens).
fn small_body(resp: &mut Response<Body>, what: &str) -> Result<Vec<u8>> {
    resp.body_mut()
        .with_config()
        .limit(SMALL_LIMIT)
        .read_to_vec()
        .map_err(|e| MirrorError::new(format!("{what}: {e}")))
}

/// `key="value", key=value` pairs of a challenge.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while let Some((k, r)) = rest.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (v, r) = if let Some(r) = r.strip_prefix('"') {
            r.split_once('"').unwrap_or((r, ""))
        } else {
            r.split_once(',').unwrap_or((r, ""))
        };
        out.insert(k, v.to_owned());
        rest = r.trim_start_matches(',').trim();
    }
    out
}

struct HashingReader<'a> {
    inner: &'a mut dyn Read,
    hasher: Option<Hasher>,
    got: Option<Digest>,
    read: u64,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.read += n as u64;
        if n == 0 {
            if let Some(h) = self.hasher.take() {
                self.got = Some(h.finish());
            }
        }
        Ok(n)
    }
}

/// A blob being downloaded: on a dropped connection it asks for the rest with a Range
/// request, up to `RESUMES` times.
struct Download<'a> {
    remote: &'a Remote,
    repo: String,
    digest: Digest,
    size: u64,
    at: u64,
    body: ureq::BodyReader<'static>,
    resumes: u32,
}

impl Read for Download<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.body.read(buf) {
                Ok(0) if self.at < self.size => {
                    self.reconnect(std::io::Error::other("connection closed early"))?
                }
                Ok(n) => {
                    self.at += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => self.reconnect(e)?,
            }
        }
    }
}

impl Download<'_> {
    fn reconnect(&mut self, e: std::io::Error) -> std::io::Result<()> {
        if self.resumes >= RESUMES {
            return Err(e);
        }
        self.resumes += 1;
        log::warn!(
            "blob {} from {}: {e} at byte {} of {}; resuming with a Range request",
            self.digest,
            self.remote.base,
            self.at,
            self.size
        );
        std::thread::sleep(Duration::from_millis(500 * u64::from(self.resumes)));
        let (resp, start) = self
            .remote
            .blob_response(&self.repo, &self.digest, self.at)
            .map_err(|e| std::io::Error::other(e.message))?;
        let mut body = resp.into_body().into_reader();
        if start < self.at {
            // No Range support: skip what we have.
            std::io::copy(&mut (&mut body).take(self.at - start), &mut std::io::sink())?;
        }
        self.body = body;
        Ok(())
    }
}

impl Source for Remote {
    fn manifest(&self, repo: &str, reference: &str, _hint: Option<&str>) -> Result<Fetched> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let mut resp = self.manifest_request("GET", repo, reference)?;
        if resp.status() != 200 {
            return Err(self.refused(&format!("manifest {repo}:{reference}"), resp));
        }
        let media_type = header(&resp, "content-type")
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned());
        let body = small_body(&mut resp, &path)?;
        let declared = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_owned));
        let media_type = match media_type.as_deref() {
            Some(t @ (OCI_INDEX | OCI_MANIFEST | DOCKER_LIST | DOCKER_MANIFEST)) => t.to_owned(),
            _ => declared.unwrap_or_else(|| OCI_MANIFEST.to_owned()),
        };
        let wanted = Digest::parse(reference).ok();
        Fetched::verified(
            media_type,
            body,
            wanted.as_ref(),
            &format!("{}{path}", self.base),
        )
    }

    fn blob(&self, repo: &str, digest: &Digest, size: u64, offset: u64) -> Result<BlobReader<'_>> {
        let (resp, start) = self.blob_response(repo, digest, offset)?;
        let mut body = resp.into_body().into_reader();
        if start < offset {
            std::io::copy(&mut (&mut body).take(offset - start), &mut std::io::sink())
                .map_err(|e| MirrorError::new(format!("blob {digest}: {e}")))?;
        }
        Ok(Box::new(Download {
            remote: self,
            repo: repo.to_owned(),
            digest: digest.clone(),
            size,
            at: offset,
            body,
            resumes: 0,
        }))
    }
}

impl Sink for Remote {
    fn has_blob(&mut self, repo: &str, digest: &Digest, _size: u64) -> Result<bool> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let scope = Self::scope(repo, true);
        let resp = self
            .send("HEAD", &path, &scope, &[], || ())
            .map_err(|e| self.net(&path, e))?;
        if resp.status() == 200 {
            return Ok(true);
        }
        // A mount without from=: the registry links it if it holds it anywhere we may read.
        let path = format!("/v2/{repo}/blobs/uploads/?mount={digest}");
        let resp = self
            .send("POST", &path, &scope, &[], || &b""[..])
            .map_err(|e| self.net(&path, e))?;
        match resp.status().as_u16() {
            201 => Ok(true),
            202 => {
                if let Some(loc) = header(&resp, "location") {
                    self.pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert((repo.to_owned(), digest.to_string()), loc.to_owned());
                }
                Ok(false)
            }
            _ => Err(self.refused(&format!("blob {digest}"), resp)),
        }
    }

    fn put_blob<'s>(
        &mut self,
        repo: &str,
        digest: &Digest,
        size: u64,
        open: &mut dyn FnMut(u64) -> Result<BlobReader<'s>>,
    ) -> Result<()> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(repo.to_owned(), digest.to_string()));
        let location = match pending {
            Some(l) => l,
            None => {
                let path = format!("/v2/{repo}/blobs/uploads/");
                let resp = self
                    .send("POST", &path, &Self::scope(repo, true), &[], || &b""[..])
                    .map_err(|e| self.net(&path, e))?;
                if resp.status() != 202 {
                    return Err(self.refused(&format!("blob {digest}"), resp));
                }
                header(&resp, "location")
                    .map(str::to_owned)
                    .ok_or_else(|| MirrorError::new("upload started without a Location"))?
            }
        };
        let mut r = open(0)?;
        // Counts what the source gives: a short source must not look like a bad digest.
        let mut counted = CountedReader {
            inner: &mut r,
            n: 0,
        };
        let result = self.upload(repo, &location, digest, size, &mut counted);
        if counted.n != size && result.is_err() {
            return Err(MirrorError::new(format!(
                "blob {digest}: the source gave {} of {size} bytes",
                counted.n
            )));
        }
        result
    }

    fn has_manifest(&mut self, repo: &str, digest: &Digest) -> Result<bool> {
        Ok(self.head_manifest(repo, digest.as_str())?.is_some())
    }

    fn put_manifest(&mut self, repo: &str, m: &Fetched, tag: Option<&str>) -> Result<()> {
        let reference = tag.map_or_else(|| m.digest.to_string(), str::to_owned);
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .send(
                "PUT",
                &path,
                &Self::scope(repo, true),
                &[("Content-Type", m.media_type.clone())],
                || m.body.as_slice(),
            )
            .map_err(|e| self.net(&path, e))?;
        if resp.status() != 201 {
            return Err(self.refused(&format!("manifest {repo}:{reference}"), resp));
        }
        Ok(())
    }

    fn forget_blob(&mut self, repo: &str, digest: &Digest) {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let _ = self.send("DELETE", &path, &Self::scope(repo, true), &[], || &b""[..]);
    }
}

struct CountedReader<'a, R: Read> {
    inner: &'a mut R,
    n: u64,
}

impl<R: Read> Read for CountedReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn challenge_params() {
        let p = super::parse_params(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/alpine:pull");
    }
}
