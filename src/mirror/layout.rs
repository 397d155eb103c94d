//! Writing an OCI image layout (a directory, or a tar of one) for export. Blobs stream
//! through a fixed buffer and are verified as they are written; the result appears only
//! when complete (a tar is renamed into place, a directory gets its index.json last).

use super::{fill, BlobReader, Fetched, MirrorError, Result, Sink};
use crate::digest::{Digest, Hasher};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

enum Out {
    Dir(PathBuf),
    Tar {
        tmp: PathBuf,
        path: PathBuf,
        tar: super::tar::Writer<BufWriter<File>>,
    },
}

/// An OCI image layout being written.
pub struct LayoutWriter {
    out: Out,
    written: HashSet<String>,
    /// index.json entries.
    entries: Vec<Value>,
    buf: Vec<u8>,
}

fn io(what: &Path, e: std::io::Error) -> MirrorError {
    MirrorError::new(format!("writing {}: {e}", what.display()))
}

impl LayoutWriter {
    /// A layout at `path`: a tar file if it ends in `.tar`, else a directory.
    pub fn create(path: &Path) -> Result<LayoutWriter> {
        let out = if path.extension().is_some_and(|e| e == "tar") {
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".partial");
            let tmp = PathBuf::from(tmp);
            let f = File::create(&tmp).map_err(|e| io(&tmp, e))?;
            let mut tar = super::tar::Writer::new(BufWriter::with_capacity(1 << 16, f));
            tar.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
                .and_then(|()| tar.dir("blobs/"))
                .and_then(|()| tar.dir("blobs/sha256/"))
                .map_err(|e| io(&tmp, e))?;
            Out::Tar {
                tmp,
                path: path.to_owned(),
                tar,
            }
        } else {
            std::fs::create_dir_all(path.join("blobs/sha256")).map_err(|e| io(path, e))?;
            std::fs::write(
                path.join("oci-layout"),
                br#"{"imageLayoutVersion":"1.0.0"}"#,
            )
            .map_err(|e| io(path, e))?;
            Out::Dir(path.to_owned())
        };
        Ok(LayoutWriter {
            out,
            written: HashSet::new(),
            entries: Vec::new(),
            buf: vec![0u8; 1 << 18],
        })
    }

    /// Names image `digest` in index.json as `repo:tag` (both annotations containerd and
    /// skopeo read).
    pub fn name(&mut self, m: &Fetched, repo: &str, tag: Option<&str>) {
        let mut notes = serde_json::Map::new();
        match tag {
            Some(t) => {
                notes.insert(
                    "io.containerd.image.name".into(),
                    json!(format!("{repo}:{t}")),
                );
                notes.insert("org.opencontainers.image.ref.name".into(), json!(t));
            }
            None => {
                notes.insert("io.containerd.image.name".into(), json!(repo));
            }
        }
        self.entries.push(json!({
            "mediaType": m.media_type,
            "digest": m.digest.as_str(),
            "size": m.body.len(),
            "annotations": notes,
        }));
    }

    /// Writes index.json and closes the layout; returns the bytes of blobs written.
    pub fn finish(self) -> Result<()> {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": crate::registry::manifest::OCI_INDEX,
            "manifests": self.entries,
        });
        let body = serde_json::to_vec_pretty(&index).expect("JSON values serialize");
        match self.out {
            Out::Dir(d) => {
                let tmp = d.join("index.json.partial");
                std::fs::write(&tmp, &body)
                    .and_then(|()| std::fs::rename(&tmp, d.join("index.json")))
                    .map_err(|e| io(&d, e))
            }
            Out::Tar { tmp, path, mut tar } => {
                tar.file("index.json", &body).map_err(|e| io(&tmp, e))?;
                let f = tar
                    .finish()
                    .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
                    .map_err(|e| io(&tmp, e))?;
                f.sync_all().map_err(|e| io(&tmp, e))?;
                std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))
            }
        }
    }

    /// Removes a partial tar after a failure.
    pub fn abandon(self) {
        if let Out::Tar { tmp, .. } = self.out {
            let _ = std::fs::remove_file(tmp);
        }
    }

    fn blob_name(digest: &Digest) -> String {
        let (alg, hex) = digest.as_str().split_once(':').expect("validated digest");
        format!("blobs/{alg}/{hex}")
    }

    /// Writes `size` bytes from `r` as blob `digest`, verifying them.
    fn write_blob(&mut self, digest: &Digest, size: u64, r: &mut dyn Read) -> Result<()> {
        let name = Self::blob_name(digest);
        let mut hasher = Hasher::new(digest.algorithm());
        let mut at = 0u64;
        let short = |at: u64| {
            MirrorError::new(format!(
                "blob {digest}: source ended at byte {at} of {size}"
            ))
        };
        match &mut self.out {
            Out::Dir(d) => {
                let path = d.join(&name);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
                }
                let tmp = d.join(format!("{name}.partial"));
                let mut f = BufWriter::new(File::create(&tmp).map_err(|e| io(&tmp, e))?);
                loop {
                    let n = fill(r, &mut self.buf).map_err(|e| MirrorError::new(e.to_string()))?;
                    if n == 0 {
                        break;
                    }
                    f.write_all(&self.buf[..n]).map_err(|e| io(&tmp, e))?;
                    hasher.update(&self.buf[..n]);
                    at += n as u64;
                }
                f.flush().map_err(|e| io(&tmp, e))?;
                let ok = at == size && hasher.finish() == *digest;
                if !ok {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(if at != size {
                        short(at)
                    } else {
                        MirrorError::integrity(format!("blob {digest}: content does not match"))
                    });
                }
                std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
            }
            Out::Tar { tmp, tar, .. } => {
                tar.file_header(&name, size).map_err(|e| io(tmp, e))?;
                while at < size {
                    let want = self.buf.len().min((size - at) as usize);
                    let n = fill(r, &mut self.buf[..want])
                        .map_err(|e| MirrorError::new(e.to_string()))?;
                    if n == 0 {
                        return Err(short(at));
                    }
                    tar.data(&self.buf[..n]).map_err(|e| io(tmp, e))?;
                    hasher.update(&self.buf[..n]);
                    at += n as u64;
                }
                tar.pad(size).map_err(|e| io(tmp, e))?;
                if hasher.finish() != *digest {
                    return Err(MirrorError::integrity(format!(
                        "blob {digest}: content does not match"
                    )));
                }
            }
        }
        self.written.insert(digest.to_string());
        Ok(())
    }
}

use std::io::Read;

impl Sink for LayoutWriter {
    fn has_blob(&mut self, _repo: &str, digest: &Digest, size: u64) -> Result<bool> {
        if self.written.contains(digest.as_str()) {
            return Ok(true);
        }
        // A directory from an earlier, interrupted export: keep blobs of the right size
        // (their names were verified when they were renamed into place).
        if let Out::Dir(d) = &self.out {
            let p = d.join(Self::blob_name(digest));
            if std::fs::metadata(&p).is_ok_and(|m| m.len() == size) {
                self.written.insert(digest.to_string());
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn put_blob<'s>(
        &mut self,
        _repo: &str,
        digest: &Digest,
        size: u64,
        open: &mut dyn FnMut(u64) -> Result<BlobReader<'s>>,
    ) -> Result<()> {
        let mut r = open(0)?;
        self.write_blob(digest, size, &mut r)
    }

    fn has_manifest(&mut self, _repo: &str, digest: &Digest) -> Result<bool> {
        Ok(self.written.contains(digest.as_str()))
    }

    fn put_manifest(&mut self, _repo: &str, m: &Fetched, _tag: Option<&str>) -> Result<()> {
        if self.written.contains(m.digest.as_str()) {
            return Ok(());
        }
        let body = m.body.clone();
        self.write_blob(&m.digest, body.len() as u64, &mut body.as_slice())
    }
}
