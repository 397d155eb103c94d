//! Manifest rules: which media types we take, what a manifest references, its referrer entry.

use crate::digest::Digest;
use serde_json::{Map, Value};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// What a client pointed at: a blob or a manifest the registry must already hold.
#[derive(Debug, Clone)]
pub struct Descriptor {
    /// Content digest.
    pub digest: Digest,
    /// Declared size in bytes.
    pub size: u64,
}

/// A validated manifest: what to store and what must exist first.
#[derive(Debug)]
pub struct Manifest {
    /// The media type to serve it with.
    pub media_type: String,
    /// Blobs (config, layers) that must be linked in the repository.
    pub blobs: Vec<Descriptor>,
    /// Manifests (index entries) that must exist in the repository.
    pub children: Vec<Descriptor>,
    /// The manifest this one refers to (referrers API), if any.
    pub subject: Option<Digest>,
    artifact_type: Option<String>,
    annotations: Option<Value>,
}

/// Why a manifest was refused.
#[derive(Debug)]
pub enum ManifestError {
    /// Not a manifest we can validate (bad JSON, missing fields, bad descriptors).
    Invalid(String),
    /// A media type this registry does not serve (Docker schema 1).
    Unsupported(String),
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, ManifestError> {
    Err(ManifestError::Invalid(msg.into()))
}

/// True if `t` is a media type as RFC 6838 section 4.2 defines it, without parameters:
/// `type/subtype`, each a restricted name of 1 to 127 characters. This is what we serve as a
/// `Content-Type` and store in a bounded record field: no control character gets through.
pub fn valid_media_type(t: &str) -> bool {
    fn restricted_name(n: &str) -> bool {
        let b = n.as_bytes();
        (1..=127).contains(&b.len())
            && b[0].is_ascii_alphanumeric()
            && b.iter().all(|&c| {
                c.is_ascii_alphanumeric()
                    || matches!(
                        c,
                        b'!' | b'#' | b'$' | b'&' | b'-' | b'^' | b'_' | b'.' | b'+'
                    )
            })
    }
    t.split_once('/')
        .is_some_and(|(ty, sub)| restricted_name(ty) && restricted_name(sub))
}

/// `t` if it is a valid media type, else the error naming `what` (shown shortened).
fn checked_media_type<'t>(t: &'t str, what: &str) -> Result<&'t str, ManifestError> {
    if valid_media_type(t) {
        return Ok(t);
    }
    let shown: String = t.chars().take(64).collect();
    invalid(format!(
        "{what} {shown:?}{} is not a media type (RFC 6838: type/subtype, letters, digits and !#$&-^_.+, at most 127 each)",
        if shown.len() < t.len() { "..." } else { "" }
    ))
}

impl Manifest {
    /// Validates `body` sent with `content_type` (the request's, parameters stripped, if any).
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Manifest, ManifestError> {
        let json: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return invalid(format!("manifest is not valid JSON: {e}")),
        };
        let Some(obj) = json.as_object() else {
            return invalid("manifest is not a JSON object");
        };
        let declared = match obj.get("mediaType") {
            None => None,
            Some(Value::String(s)) => Some(checked_media_type(s, "mediaType")?),
            Some(_) => return invalid("mediaType is not a string"),
        };
        // A generic or absent Content-Type defers to the document's own mediaType.
        let header = content_type
            .filter(|t| !matches!(*t, "application/json" | "application/octet-stream" | ""))
            .map(|t| checked_media_type(t, "Content-Type"))
            .transpose()?;
        if let (Some(h), Some(d)) = (header, declared) {
            if h != d {
                return invalid(format!(
                    "Content-Type {h} differs from the manifest's mediaType {d}"
                ));
            }
        }
        let is_index_shape = obj.contains_key("manifests");
        let media_type = match header.or(declared) {
            Some(t) => t.to_owned(),
            None if is_index_shape => OCI_INDEX.to_owned(),
            None => OCI_MANIFEST.to_owned(),
        };
        if media_type.starts_with("application/vnd.docker.distribution.manifest.v1") {
            return Err(ManifestError::Unsupported(
                "Docker schema 1 manifests are not supported; push schema 2 or OCI".into(),
            ));
        }
        if obj.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
            return invalid("schemaVersion must be 2");
        }
        let index = match media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => true,
            OCI_MANIFEST | DOCKER_MANIFEST => false,
            _ => is_index_shape,
        };
        let mut m = Manifest {
            media_type,
            blobs: Vec::new(),
            children: Vec::new(),
            subject: None,
            artifact_type: None,
            annotations: obj.get("annotations").cloned(),
        };
        if index {
            let Some(list) = obj.get("manifests").and_then(Value::as_array) else {
                return invalid("an index needs a manifests array");
            };
            for d in list {
                m.children.push(descriptor(d, "manifests[]")?);
            }
        } else {
            let config = obj
                .get("config")
                .ok_or_else(|| ManifestError::Invalid("an image manifest needs config".into()))?;
            m.blobs.push(descriptor(config, "config")?);
            let layers = match obj.get("layers") {
                Some(Value::Array(l)) => l.as_slice(),
                None => &[],
                Some(_) => return invalid("layers is not an array"),
            };
            for l in layers {
                // Foreign (non-distributable) layers live at their URLs, not here.
                if l.get("urls")
                    .and_then(Value::as_array)
                    .is_some_and(|u| !u.is_empty())
                {
                    descriptor(l, "layers[]")?;
                    continue;
                }
                m.blobs.push(descriptor(l, "layers[]")?);
            }
            m.artifact_type = config
                .get("mediaType")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        match obj.get("artifactType") {
            None => {}
            Some(Value::String(s)) => {
                m.artifact_type = Some(checked_media_type(s, "artifactType")?.to_owned())
            }
            Some(_) => return invalid("artifactType is not a string"),
        }
        if let Some(s) = obj.get("subject") {
            m.subject = Some(descriptor(s, "subject")?.digest);
        }
        Ok(m)
    }

    /// The descriptor listed for this manifest by the referrers API.
    pub fn referrer_descriptor(&self, digest: &Digest, size: usize) -> Vec<u8> {
        let mut d = Map::new();
        d.insert("mediaType".into(), Value::String(self.media_type.clone()));
        d.insert("digest".into(), Value::String(digest.to_string()));
        d.insert("size".into(), Value::from(size));
        if let Some(t) = &self.artifact_type {
            d.insert("artifactType".into(), Value::String(t.clone()));
        }
        if let Some(a) = self.annotations.as_ref().filter(|a| a.is_object()) {
            d.insert("annotations".into(), a.clone());
        }
        serde_json::to_vec(&Value::Object(d)).expect("a JSON map serialises")
    }
}

fn descriptor(v: &Value, what: &str) -> Result<Descriptor, ManifestError> {
    let Some(o) = v.as_object() else {
        return invalid(format!("{what} is not a descriptor object"));
    };
    let digest = o
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| ManifestError::Invalid(format!("{what} has no digest")))?;
    let digest =
        Digest::parse(digest).map_err(|e| ManifestError::Invalid(format!("{what}: {e}")))?;
    let size = o
        .get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| ManifestError::Invalid(format!("{what} has no valid size")))?;
    if o.get("mediaType").is_some_and(|t| !t.is_string()) {
        return invalid(format!("{what} mediaType is not a string"));
    }
    Ok(Descriptor { digest, size })
}

/// Reads the artifactType of a stored referrer descriptor (for `?artifactType=` filtering).
pub fn descriptor_artifact_type(descriptor: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(descriptor).ok()?;
    v.get("artifactType")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn image_manifest_references_config_and_layers() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"x","digest":"{}","size":5}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":9}}}}"#,
            d('a'),
            d('b'),
            d('c')
        );
        let m = Manifest::parse(Some(OCI_MANIFEST), body.as_bytes()).unwrap();
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(m.subject.unwrap().to_string(), d('c'));
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn rejects_bad_documents() {
        for (ct, body) in [
            (None, "not json"),
            (None, "[]"),
            (None, r#"{"schemaVersion":1}"#),
            (Some(OCI_INDEX), r#"{"schemaVersion":2}"#),
            (
                Some(OCI_MANIFEST),
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
            ),
            (
                Some(OCI_MANIFEST),
                r#"{"schemaVersion":2,"config":{"digest":"sha256:xyz","size":1}}"#,
            ),
        ] {
            assert!(
                matches!(
                    Manifest::parse(ct, body.as_bytes()),
                    Err(ManifestError::Invalid(_))
                ),
                "{body}"
            );
        }
        for bad in [
            "application/vnd.oci.image.manifest.v1+json\r\nX-Evil: 1",
            "text",
            "/json",
            "a/",
            "a/b/c",
            "a/ b",
            "a/b; charset=utf-8",
            "a/\u{0}",
        ] {
            let json = serde_json::to_string(bad).unwrap();
            let body = format!(r#"{{"schemaVersion":2,"mediaType":{json},"manifests":[]}}"#);
            assert!(
                matches!(
                    Manifest::parse(Some("application/json"), body.as_bytes()),
                    Err(ManifestError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
        let long = format!("application/{}", "x".repeat(70_000));
        assert!(!valid_media_type(&long));
        assert!(valid_media_type(&format!("a/{}", "b".repeat(127))));
        assert!(!valid_media_type(&format!("a/{}", "b".repeat(128))));
        assert!(valid_media_type(OCI_MANIFEST) && valid_media_type(DOCKER_LIST));
        let v1 = "application/vnd.docker.distribution.manifest.v1+prettyjws";
        assert!(matches!(
            Manifest::parse(Some(v1), b"{}"),
            Err(ManifestError::Unsupported(_))
        ));
    }
}
