//! Reading image archives: an OCI image layout (a directory, or a tar of one, as `skopeo copy
//! oci:`/`oci-archive:` and `docker save` since Docker 25 write) and the older `docker save`
//! format (manifest.json, `<id>/layer.tar`). Names in the archive are data, not paths:
//! only entries the archive lists are opened, and `..` never leaves a directory.

use super::{BlobReader, Fetched, MirrorError, Result, Source};
use crate::digest::Digest;
use crate::registry::manifest::OCI_MANIFEST;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

/// An image an archive names, to be imported.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Repository from the archive's annotations (`io.containerd.image.name`, a full
    /// `org.opencontainers.image.ref.name`, or docker save's RepoTags), registry host removed.
    pub repo: Option<String>,
    /// Tag, if the archive names one.
    pub tag: Option<String>,
    /// The top manifest's digest.
    pub digest: Digest,
}

enum Files {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        entries: HashMap<String, (u64, u64)>,
    },
}

/// An opened archive.
pub struct Archive {
    files: Files,
    /// Manifests made up for docker save images (digest -> manifest).
    synthetic: HashMap<String, Fetched>,
    /// Blob digest -> file in the archive, for docker save layers and configs.
    named_blobs: HashMap<String, String>,
    /// Media types of manifests as their descriptors give them.
    media_types: HashMap<String, String>,
    /// The images it holds.
    pub entries: Vec<Entry>,
    /// Which format it is, for messages.
    pub format: &'static str,
}

/// Splits `[host/]repo[:tag]`, dropping a registry host (a first component with `.` or `:`,
/// or `localhost`).
pub fn split_reference(s: &str) -> (Option<String>, Option<String>) {
    let s = s.split('@').next().unwrap_or(s);
    let (name, tag) = match s.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t.to_owned())),
        _ => (s, None),
    };
    let name = match name.split_once('/') {
        Some((host, rest)) if host.contains('.') || host.contains(':') || host == "localhost" => {
            rest
        }
        _ => name,
    };
    let name = name.strip_prefix("library/").unwrap_or(name);
    let repo = crate::registry::names::valid_name(name).then(|| name.to_owned());
    let tag = tag.filter(|t| crate::registry::names::valid_tag(t));
    (repo, tag)
}

impl Archive {
    /// Opens `path`: a directory or a tar file.
    pub fn open(path: &Path) -> Result<Archive> {
        let meta = std::fs::metadata(path)
            .map_err(|e| MirrorError::new(format!("cannot read {}: {e}", path.display())))?;
        let files = if meta.is_dir() {
            Files::Dir(path.to_owned())
        } else {
            let mut f = File::open(path)
                .map_err(|e| MirrorError::new(format!("cannot open {}: {e}", path.display())))?;
            let entries = super::tar::index(&mut f)
                .map_err(|e| MirrorError::new(format!("{}: {e}", path.display())))?;
            Files::Tar {
                path: path.to_owned(),
                entries,
            }
        };
        let mut a = Archive {
            files,
            synthetic: HashMap::new(),
            named_blobs: HashMap::new(),
            media_types: HashMap::new(),
            entries: Vec::new(),
            format: "OCI image layout",
        };
        if a.exists("index.json") {
            a.read_oci_index()?;
        } else if a.exists("manifest.json") {
            a.format = "docker save archive";
            a.read_docker_manifest()?;
        } else {
            return Err(MirrorError::new(format!(
                "{} is neither an OCI image layout (no index.json) nor a docker save archive \
                 (no manifest.json)",
                path.display()
            )));
        }
        Ok(a)
    }

    fn exists(&self, name: &str) -> bool {
        match &self.files {
            Files::Dir(d) => safe_join(d, name).is_some_and(|p| p.is_file()),
            Files::Tar { entries, .. } => entries.contains_key(name),
        }
    }

    /// Opens file `name` of the archive from `offset`; returns it and its size.
    fn open_file(&self, name: &str, offset: u64) -> Result<(Box<dyn Read + 'static>, u64)> {
        let missing = || MirrorError::integrity(format!("the archive has no {name}"));
        match &self.files {
            Files::Dir(d) => {
                let p = safe_join(d, name).ok_or_else(missing)?;
                let mut f = File::open(&p).map_err(|_| missing())?;
                let size = f
                    .metadata()
                    .map_err(|e| MirrorError::new(e.to_string()))?
                    .len();
                f.seek(SeekFrom::Start(offset))
                    .map_err(|e| MirrorError::new(e.to_string()))?;
                Ok((
                    Box::new(std::io::BufReader::with_capacity(1 << 16, f)),
                    size,
                ))
            }
            Files::Tar { path, entries } => {
                let (at, size) = *entries.get(name).ok_or_else(missing)?;
                let mut f = File::open(path).map_err(|e| MirrorError::new(e.to_string()))?;
                f.seek(SeekFrom::Start(at + offset.min(size)))
                    .map_err(|e| MirrorError::new(e.to_string()))?;
                let r = std::io::BufReader::with_capacity(1 << 16, f).take(size - offset.min(size));
                Ok((Box::new(r), size))
            }
        }
    }

    /// A small JSON file of the archive.
    fn read_small(&self, name: &str) -> Result<Vec<u8>> {
        let (r, size) = self.open_file(name, 0)?;
        if size > 16 << 20 {
            return Err(MirrorError::integrity(format!(
                "{name} is implausibly large"
            )));
        }
        let mut v = Vec::with_capacity(size as usize);
        r.take(size)
            .read_to_end(&mut v)
            .map_err(|e| MirrorError::new(format!("reading {name}: {e}")))?;
        Ok(v)
    }

    fn json(&self, name: &str) -> Result<Value> {
        serde_json::from_slice(&self.read_small(name)?)
            .map_err(|e| MirrorError::integrity(format!("{name} is not valid JSON: {e}")))
    }

    fn read_oci_index(&mut self) -> Result<()> {
        let index = self.json("index.json")?;
        let list = index["manifests"]
            .as_array()
            .ok_or_else(|| MirrorError::integrity("index.json has no manifests array"))?;
        for d in list {
            let digest = d["digest"]
                .as_str()
                .and_then(|s| Digest::parse(s).ok())
                .ok_or_else(|| MirrorError::integrity("index.json: an entry has no digest"))?;
            if let Some(mt) = d["mediaType"].as_str() {
                self.media_types.insert(digest.to_string(), mt.to_owned());
            }
            let notes = &d["annotations"];
            let full = notes["io.containerd.image.name"].as_str();
            let refname = notes["org.opencontainers.image.ref.name"].as_str();
            let (mut repo, mut tag) = full.map(split_reference).unwrap_or_default();
            if let Some(r) = refname {
                if r.contains('/') || r.contains(':') {
                    let (rr, rt) = split_reference(r);
                    repo = repo.or(rr);
                    tag = tag.or(rt);
                } else if crate::registry::names::valid_tag(r) {
                    tag = Some(r.to_owned());
                } else if crate::registry::names::valid_name(r) {
                    repo = repo.or(Some(r.to_owned()));
                }
            }
            self.entries.push(Entry { repo, tag, digest });
        }
        Ok(())
    }

    fn read_docker_manifest(&mut self) -> Result<()> {
        let list = self.json("manifest.json")?;
        let list = list
            .as_array()
            .ok_or_else(|| MirrorError::integrity("manifest.json is not a list"))?
            .clone();
        for image in list {
            let config_name = image["Config"]
                .as_str()
                .ok_or_else(|| MirrorError::integrity("manifest.json: an image has no Config"))?;
            let config = self.read_small(config_name)?;
            let config_digest = Digest::sha256_of(&config);
            let config_json: Value = serde_json::from_slice(&config).map_err(|e| {
                MirrorError::integrity(format!("{config_name} is not valid JSON: {e}"))
            })?;
            let diff_ids = config_json["rootfs"]["diff_ids"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let layers = image["Layers"].as_array().cloned().unwrap_or_default();
            if layers.len() != diff_ids.len() {
                return Err(MirrorError::integrity(format!(
                    "{config_name}: {} layers but {} diff_ids",
                    layers.len(),
                    diff_ids.len()
                )));
            }
            self.named_blobs
                .insert(config_digest.to_string(), config_name.to_owned());
            let mut descs = Vec::new();
            for (layer, diff) in layers.iter().zip(&diff_ids) {
                let name = layer
                    .as_str()
                    .ok_or_else(|| MirrorError::integrity("manifest.json: bad Layers entry"))?;
                // The layer's digest is its diff_id (an uncompressed tar): verified on import.
                let digest = diff
                    .as_str()
                    .and_then(|d| Digest::parse(d).ok())
                    .ok_or_else(|| MirrorError::integrity(format!("{config_name}: bad diff_id")))?;
                let (_, size) = self.open_file(name, 0)?;
                self.named_blobs.insert(digest.to_string(), name.to_owned());
                descs.push(json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest.as_str(),
                    "size": size,
                }));
            }
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest.as_str(),
                    "size": config.len(),
                },
                "layers": descs,
            });
            let body = serde_json::to_vec(&manifest).expect("JSON values serialize");
            let digest = Digest::sha256_of(&body);
            self.synthetic.insert(
                digest.to_string(),
                Fetched {
                    media_type: OCI_MANIFEST.to_owned(),
                    digest: digest.clone(),
                    body,
                },
            );
            let tags: Vec<&str> = image["RepoTags"]
                .as_array()
                .map(|t| t.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if tags.is_empty() {
                self.entries.push(Entry {
                    repo: None,
                    tag: None,
                    digest: digest.clone(),
                });
            }
            for t in tags {
                let (repo, tag) = split_reference(t);
                self.entries.push(Entry {
                    repo,
                    tag,
                    digest: digest.clone(),
                });
            }
        }
        Ok(())
    }

    /// The file holding blob or manifest `digest`.
    fn blob_file(&self, digest: &Digest) -> String {
        if let Some(name) = self.named_blobs.get(digest.as_str()) {
            return name.clone();
        }
        let (alg, hex) = digest.as_str().split_once(':').expect("validated digest");
        format!("blobs/{alg}/{hex}")
    }
}

/// `dir/name` if `name` is a plain relative path that stays inside `dir`.
fn safe_join(dir: &Path, name: &str) -> Option<PathBuf> {
    let rel = Path::new(name);
    rel.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        .then(|| dir.join(rel))
}

impl Source for Archive {
    fn manifest(&self, _repo: &str, reference: &str, hint: Option<&str>) -> Result<Fetched> {
        let digest = Digest::parse(reference)
            .map_err(|_| MirrorError::new(format!("{reference}: archives hold digests only")))?;
        if let Some(m) = self.synthetic.get(digest.as_str()) {
            return Ok(m.clone());
        }
        let body = self.read_small(&self.blob_file(&digest))?;
        let declared = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_owned));
        let media_type = declared
            .or_else(|| hint.map(str::to_owned))
            .or_else(|| self.media_types.get(digest.as_str()).cloned())
            .unwrap_or_else(|| OCI_MANIFEST.to_owned());
        Fetched::verified(media_type, body, Some(&digest), "archive")
    }

    fn blob(&self, _repo: &str, digest: &Digest, size: u64, offset: u64) -> Result<BlobReader<'_>> {
        let name = self.blob_file(digest);
        let (r, actual) = self.open_file(&name, offset)?;
        if actual != size {
            return Err(MirrorError::integrity(format!(
                "{name} (blob {digest}) has {actual} bytes, its descriptor says {size}: refused"
            )));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_paths() {
        let s = |x: &str| split_reference(x);
        assert_eq!(
            s("docker.io/library/alpine:3.19"),
            (Some("alpine".into()), Some("3.19".into()))
        );
        assert_eq!(
            s("localhost:5000/a/b:v1"),
            (Some("a/b".into()), Some("v1".into()))
        );
        assert_eq!(s("plant/app"), (Some("plant/app".into()), None));
        assert_eq!(s("BAD:v1").0, None);
        let d = Path::new("/x");
        assert!(safe_join(d, "../etc/passwd").is_none());
        assert!(safe_join(d, "/etc/passwd").is_none());
        assert_eq!(
            safe_join(d, "a/layer.tar"),
            Some(PathBuf::from("/x/a/layer.tar"))
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::mirror::layout::LayoutWriter;
    use crate::mirror::tar::Writer;
    use crate::mirror::Sink;
    use crate::registry::prop_config;
    use proptest::prelude::*;

    /// JSON values that look like a docker save manifest.json or an OCI index.json, with
    /// names that point at the archive's files, outside it, or nowhere.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            prop::sample::select(vec![
                "config.json",
                "layer.tar",
                "../etc/passwd",
                "/etc/passwd",
                "",
                ".",
                "blobs",
                "docker.io/library/a:1",
                "a:b:c",
                "localhost:5000/x",
                "@",
                "index.json",
            ])
            .prop_map(Value::from),
            "[0-9a-f]{64}".prop_map(|h| Value::from(format!("sha256:{h}"))),
            "\\PC{0,16}".prop_map(Value::from),
        ];
        let key = prop::sample::select(vec![
            "Config",
            "Layers",
            "RepoTags",
            "rootfs",
            "diff_ids",
            "manifests",
            "digest",
            "mediaType",
            "annotations",
            "io.containerd.image.name",
            "org.opencontainers.image.ref.name",
            "size",
        ]);
        leaf.prop_recursive(4, 40, 5, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
                proptest::collection::vec((key.clone(), inner), 0..5).prop_map(|kv| {
                    Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
            ]
        })
    }

    fn temp(tag: &str) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        std::env::temp_dir().join(format!(
            "outpost-archive-props-{}-{tag}-{}.tar",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }

    proptest! {
        #![proptest_config(prop_config(128))]

        /// Any reference: no panic, and what it yields is a valid repository and tag.
        #[test]
        fn references_yield_valid_names(s in "[a-z0-9.:/@_-]{0,40}|\\PC{0,40}") {
            let (repo, tag) = split_reference(&s);
            prop_assert!(repo.is_none_or(|r| crate::registry::names::valid_name(&r)));
            prop_assert!(tag.is_none_or(|t| crate::registry::names::valid_tag(&t)));
        }

        /// A tar holding any manifest.json (docker save) or index.json (OCI layout), and a
        /// config and layer to point at: opened or refused, never a panic, and every image
        /// it lists can be asked for without one.
        #[test]
        fn hostile_archives(doc in json(), config in json(), oci in any::<bool>()) {
            let path = temp("hostile");
            let mut w = Writer::new(File::create(&path).unwrap());
            let top = serde_json::to_vec(&doc).unwrap();
            w.file(if oci { "index.json" } else { "manifest.json" }, &top).unwrap();
            w.file("config.json", &serde_json::to_vec(&config).unwrap()).unwrap();
            w.file("layer.tar", b"layer").unwrap();
            w.finish().unwrap();
            let opened = Archive::open(&path);
            if let Ok(a) = &opened {
                for e in &a.entries {
                    let _ = a.manifest("x", e.digest.as_str(), None);
                    let _ = a.blob("x", &e.digest, 5, 0);
                }
            }
            let _ = std::fs::remove_file(&path);
        }

        /// What export writes (an OCI layout tar), import reads back: each image under
        /// its name and tag, its manifest bytes verified.
        #[test]
        fn layout_round_trip(
            images in proptest::collection::btree_map(
                ("[a-z0-9]{1,6}(/[a-z0-9]{1,6}){0,2}", proptest::option::of("[A-Za-z0-9_][A-Za-z0-9._-]{0,10}")),
                proptest::collection::vec(any::<u8>(), 1..300),
                1..4,
            ),
        ) {
            let path = temp("layout");
            let mut w = LayoutWriter::create(&path).unwrap();
            let mut want = Vec::new();
            for ((repo, tag), body) in &images {
                let m = Fetched {
                    media_type: OCI_MANIFEST.to_owned(),
                    digest: Digest::sha256_of(body),
                    body: body.clone(),
                };
                w.put_manifest(repo, &m, tag.as_deref()).unwrap();
                w.name(&m, repo, tag.as_deref());
                want.push((Some(repo.clone()), tag.clone(), m));
            }
            w.finish().unwrap();
            let a = Archive::open(&path).unwrap();
            prop_assert_eq!(a.entries.len(), want.len());
            for (e, (repo, tag, m)) in a.entries.iter().zip(&want) {
                prop_assert_eq!(&e.repo, repo);
                prop_assert_eq!(&e.tag, tag);
                prop_assert_eq!(&e.digest, &m.digest);
                prop_assert_eq!(&a.manifest("x", m.digest.as_str(), None).unwrap().body, &m.body);
            }
            let _ = std::fs::remove_file(&path);
        }
    }
}
