//! TLS: the server's rustls configuration from PEM files, and self-signed certificates for
//! sites without a CA.
//!
//! A self-signed certificate is a small fixed DER structure (ECDSA P-256, SAN, serverAuth),
//! written here with ring's signer rather than through a certificate-builder crate: the
//! binary stays small for 1 GB devices and the encoding is checked by OpenSSL and Go clients
//! in the tests.

use crate::config::TlsConfig;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

/// The server configuration for `tls`: TLS 1.2 and 1.3 with rustls' safe defaults (ring
/// provider), HTTP/1.1. Unreadable, empty or mismatched files are errors that say which.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    let (cert, key) = (&tls.cert_file, &tls.key_file);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| pem_error("tls.certFile", cert, e))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.certFile {}: no CERTIFICATE in it (a PEM file is expected)",
            cert.display()
        ));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error("tls.keyFile", key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "tls.keyFile {} is not the private key of the certificate in tls.certFile {}",
                key.display(),
                cert.display()
            ),
            e => format!(
                "tls.certFile {} / tls.keyFile {}: {e}",
                cert.display(),
                key.display()
            ),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn pem_error(what: &str, path: &Path, e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(e) => format!("{what}: cannot read {}: {e}", path.display()),
        Error::NoItemsFound => format!(
            "{what} {}: no private key in it (PEM: PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
            path.display()
        ),
        e => format!("{what} {}: not valid PEM: {e:?}", path.display()),
    }
}

/// A self-signed certificate and its key, both PEM.
pub struct SelfSigned {
    /// `-----BEGIN CERTIFICATE-----...`
    pub cert_pem: String,
    /// `-----BEGIN PRIVATE KEY-----...` (PKCS#8).
    pub key_pem: String,
    /// SHA-256 of the certificate's DER, hex.
    pub fingerprint: String,
}

/// A new ECDSA P-256 key and a certificate for `hosts` (DNS names or IP addresses, the first
/// also the common name), valid from an hour ago for `days` days.
pub fn self_signed(hosts: &[String], days: u64, now: u64) -> Result<SelfSigned, String> {
    let Some(first) = hosts.first() else {
        return Err("a certificate needs at least one host name".into());
    };
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| "cannot generate a key".to_owned())?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| "cannot load the generated key".to_owned())?;
    let ecdsa_sha256 = seq(&[oid(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02])]);
    let name = seq(&[set(&[seq(&[
        oid(&[0x55, 0x04, 0x03]),
        tlv(0x0c, format!("outpost {first}").as_bytes()),
    ])])]);
    let mut serial: [u8; 16] = crate::crypto::random();
    serial[0] = (serial[0] & 0x7f) | 0x01; // positive, and no leading zero byte
    let spki = seq(&[
        seq(&[
            oid(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]),
            oid(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
        ]),
        bit_string(pair.public_key().as_ref()),
    ]);
    let mut alt_names = Vec::new();
    for h in hosts {
        match h.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => alt_names.push(tlv(0x87, &a.octets())),
            Ok(IpAddr::V6(a)) => alt_names.push(tlv(0x87, &a.octets())),
            Err(_) => alt_names.push(tlv(0x82, h.as_bytes())),
        }
    }
    let extensions = seq(&[
        extension(&[0x55, 0x1d, 0x13], true, &seq(&[])), // basicConstraints: not a CA
        extension(&[0x55, 0x1d, 0x0f], true, &tlv(0x03, &[0x07, 0x80])), // digitalSignature
        extension(
            &[0x55, 0x1d, 0x25], // extKeyUsage: serverAuth
            false,
            &seq(&[oid(&[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01])]),
        ),
        extension(&[0x55, 0x1d, 0x11], false, &seq(&alt_names)), // subjectAltName
    ]);
    let start = now.saturating_sub(3600);
    let tbs = seq(&[
        tlv(0xa0, &tlv(0x02, &[2])), // version 3
        tlv(0x02, &serial),
        ecdsa_sha256.clone(),
        name.clone(),
        seq(&[time(start), time(start + days * 86400)]),
        name,
        spki,
        tlv(0xa3, &extensions),
    ]);
    let sig = pair
        .sign(&rng, &tbs)
        .map_err(|_| "cannot sign the certificate".to_owned())?;
    let cert = seq(&[tbs, ecdsa_sha256, bit_string(sig.as_ref())]);
    use sha2::Digest as _;
    Ok(SelfSigned {
        cert_pem: pem("CERTIFICATE", &cert),
        key_pem: pem("PRIVATE KEY", pkcs8.as_ref()),
        fingerprint: crate::crypto::hex(&sha2::Sha256::digest(&cert)),
    })
}

/// A host name or IP address a certificate can name.
pub fn valid_host(h: &str) -> bool {
    h.parse::<IpAddr>().is_ok()
        || (!h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }))
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.extend([0x81, n as u8]);
    } else {
        out.extend([0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

fn set(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x31, &parts.concat())
}

fn oid(encoded: &[u8]) -> Vec<u8> {
    tlv(0x06, encoded)
}

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    tlv(0x03, &[&[0u8][..], bytes].concat())
}

fn extension(id: &[u8], critical: bool, value: &[u8]) -> Vec<u8> {
    let mut parts = vec![oid(id)];
    if critical {
        parts.push(tlv(0x01, &[0xff]));
    }
    parts.push(tlv(0x04, value));
    seq(&parts)
}

/// UTCTime up to 2049, GeneralizedTime after (RFC 5280 4.1.2.5).
fn time(unix: u64) -> Vec<u8> {
    let (y, mo, d, h, mi, s) = crate::clock::civil(unix);
    if y < 2050 {
        tlv(
            0x17,
            format!("{:02}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z", y % 100).as_bytes(),
        )
    } else {
        tlv(
            0x18,
            format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z").as_bytes(),
        )
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_loads_into_rustls() {
        let dir = std::env::temp_dir().join(format!("outpost-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = self_signed(
            &["registry.local".into(), "127.0.0.1".into()],
            30,
            1_795_450_779,
        )
        .unwrap();
        let other = self_signed(&["x".into()], 30, 1_795_450_779).unwrap();
        let (cert, key, wrong) = (dir.join("c.pem"), dir.join("k.pem"), dir.join("w.pem"));
        std::fs::write(&cert, &s.cert_pem).unwrap();
        std::fs::write(&key, &s.key_pem).unwrap();
        std::fs::write(&wrong, &other.key_pem).unwrap();
        let cfg = |c: &Path, k: &Path| TlsConfig {
            cert_file: c.to_owned(),
            key_file: k.to_owned(),
        };
        assert!(server_config(&cfg(&cert, &key)).is_ok());
        let e = server_config(&cfg(&cert, &wrong)).unwrap_err();
        assert!(e.contains("is not the private key"), "{e}");
        let e = server_config(&cfg(&dir.join("missing"), &key)).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        let e = server_config(&cfg(&key, &key)).unwrap_err();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(valid_host("a-b.example") && valid_host("::1") && !valid_host("a..b"));
        assert!(!valid_host("-a") && !valid_host("a b"));
    }
}
