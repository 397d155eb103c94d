//! `outpost tls self-signed`: a certificate and key for a site without a CA, and how to make
//! docker, podman and containerd trust it.

use super::output::out;
use crate::config::Config;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `DIR/outpost.crt` and `DIR/outpost.key` (mode 600) for `hosts`, valid `days` days;
/// never overwrites.
pub fn self_signed(config: &Config, hosts: &[String], dir: &Path, days: u64) -> Result<(), String> {
    if let Some(bad) = hosts.iter().find(|h| !crate::tls::valid_host(h)) {
        return Err(format!("--host {bad:?}: give a DNS name or an IP address"));
    }
    let s = crate::tls::self_signed(hosts, days, crate::clock::unix_now())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let (cert, key) = (dir.join("outpost.crt"), dir.join("outpost.key"));
    for p in [&cert, &key] {
        if p.exists() {
            return Err(format!(
                "{} exists: remove it first, or give another --out directory",
                p.display()
            ));
        }
    }
    write_new(&key, s.key_pem.as_bytes(), 0o600)?;
    write_new(&cert, s.cert_pem.as_bytes(), 0o644)?;
    let port = config.listen.port();
    let host = &hosts[0];
    let at = format!("{host}:{port}");
    out!(
        "wrote {cert} (certificate for {names}, {days} days, SHA-256 {fp})\n\
         and {key} (its private key, mode 600).\n\n\
         Serve HTTPS with it: in the config file\n  \
         \"tls\": {{\"certFile\": \"{cert}\", \"keyFile\": \"{key}\"}}\n\n\
         Trust it on each machine that pulls or pushes (copy {cert} there):\n  \
         docker:      /etc/docker/certs.d/{at}/ca.crt  (no restart needed)\n  \
         podman, skopeo, buildah, CRI-O:  /etc/containers/certs.d/{at}/ca.crt\n  \
         containerd:  /etc/containerd/certs.d/{at}/hosts.toml containing\n                 \
         server = \"https://{at}\"\n                 \
         [host.\"https://{at}\"]\n                   \
         ca = \"/etc/containerd/certs.d/{at}/ca.crt\"\n               \
         (with config_path = \"/etc/containerd/certs.d\" in containerd's registry config)\n  \
         k3s:         /etc/rancher/k3s/registries.yaml: configs: \"{at}\": tls: ca_file: ...\n  \
         skopeo once: --dest-cert-dir DIR / --src-cert-dir DIR, DIR holding ca.crt",
        cert = cert.display(),
        key = key.display(),
        names = hosts.join(", "),
        fp = s.fingerprint,
    );
    Ok(())
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(data).and_then(|()| f.sync_all()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
