//! OCI image layouts for skopeo to push, and running skopeo.

use super::{sha256, OCI_INDEX, OCI_MANIFEST};
use std::path::Path;
use std::process::Command;

/// Writes blob `data` into layout `dir`; returns (digest, size).
pub fn put_blob(dir: &Path, data: &[u8]) -> (String, usize) {
    let d = sha256(data);
    std::fs::write(dir.join("blobs/sha256").join(&d[7..]), data).unwrap();
    (d, data.len())
}

pub fn desc(media_type: &str, (d, s): &(String, usize), extra: &str) -> String {
    format!(r#"{{"mediaType":"{media_type}","digest":"{d}","size":{s}{extra}}}"#)
}

/// One image (config + layers) in layout `dir`; returns its manifest descriptor parts.
pub fn image(dir: &Path, arch: &str, layers: &[Vec<u8>]) -> (String, usize) {
    let layer_descs: Vec<(String, usize)> = layers.iter().map(|l| put_blob(dir, l)).collect();
    let diff_ids: Vec<String> = layer_descs
        .iter()
        .map(|(d, _)| format!("\"{d}\""))
        .collect();
    let config = format!(
        r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[{}]}},"config":{{}}}}"#,
        diff_ids.join(",")
    );
    let config = put_blob(dir, config.as_bytes());
    let layers: Vec<String> = layer_descs
        .iter()
        .map(|l| desc("application/vnd.oci.image.layer.v1.tar", l, ""))
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
        desc("application/vnd.oci.image.config.v1+json", &config, ""),
        layers.join(",")
    );
    put_blob(dir, manifest.as_bytes())
}

pub fn layout(dir: &Path, media_type: &str, top: &(String, usize), tag: &str) {
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let entry = desc(
        media_type,
        top,
        &format!(r#","annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}"#),
    );
    std::fs::write(
        dir.join("index.json"),
        format!(r#"{{"schemaVersion":2,"manifests":[{entry}]}}"#),
    )
    .unwrap();
}

/// A multi-arch index over images `amd` and `arm` in layout `dir`, tagged `tag`.
pub fn index(
    dir: &Path,
    amd: &(String, usize),
    arm: &(String, usize),
    tag: &str,
) -> (String, usize) {
    let platform = |a: &str| format!(r#","platform":{{"architecture":"{a}","os":"linux"}}"#);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{},{}]}}"#,
        desc(OCI_MANIFEST, amd, &platform("amd64")),
        desc(OCI_MANIFEST, arm, &platform("arm64"))
    );
    let idx = put_blob(dir, index.as_bytes());
    layout(dir, OCI_INDEX, &idx, tag);
    idx
}

pub fn new_layout(root: &Path, name: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    dir
}

pub fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .expect("skopeo is required for this test: run ./test.sh, which installs it");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
