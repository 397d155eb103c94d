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

#[cfg(test)]
mod props {
    use super::*;
    use crate::registry::prop_config;
    use proptest::prelude::*;

    /// Any JSON value, nested a few levels, with the keys a manifest has.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            Just(Value::from(2)),
            Just(Value::from(OCI_MANIFEST)),
            Just(Value::from(OCI_INDEX)),
            Just(Value::from(format!("sha256:{}", "a".repeat(64)))),
            "\\PC{0,20}".prop_map(Value::from),
        ];
        let key = prop::sample::select(vec![
            "schemaVersion",
            "mediaType",
            "config",
            "layers",
            "manifests",
            "digest",
            "size",
            "subject",
            "artifactType",
            "annotations",
            "urls",
            "x",
        ]);
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                proptest::collection::vec((key.clone(), inner), 0..6).prop_map(|kv| {
                    Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
            ]
        })
    }

    fn descriptor_json() -> impl Strategy<Value = (Value, u64)> {
        (
            "[0-9a-f]{64}",
            any::<u64>(),
            proptest::option::of("[a-z]{1,8}/[a-z.+]{1,20}"),
        )
            .prop_map(|(hex, size, mt)| {
                let mut d = serde_json::json!({"digest": format!("sha256:{hex}"), "size": size});
                if let Some(mt) = mt {
                    d["mediaType"] = Value::from(mt);
                }
                (d, size)
            })
    }

    proptest! {
        #![proptest_config(prop_config(512))]

        /// Any bytes and any Content-Type: a manifest or a refusal, never a panic.
        #[test]
        fn any_bytes(ct in proptest::option::of("\\PC{0,40}"), body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Manifest::parse(ct.as_deref(), &body);
        }

        /// Any JSON shaped like a manifest: no panic; what is accepted has a valid media
        /// type and a referrer descriptor that is JSON again.
        #[test]
        fn any_json(v in json(), ct in proptest::option::of(prop::sample::select(vec![OCI_MANIFEST, OCI_INDEX, DOCKER_LIST, "application/json", ""]))) {
            let body = serde_json::to_vec(&v).unwrap();
            if let Ok(m) = Manifest::parse(ct, &body) {
                prop_assert!(valid_media_type(&m.media_type));
                let d = m.referrer_descriptor(&Digest::sha256_of(&body), body.len());
                prop_assert!(serde_json::from_slice::<Value>(&d).is_ok());
                prop_assert_eq!(descriptor_artifact_type(&d), m.artifact_type.clone());
            }
        }

        /// A well-formed image manifest or index is accepted with exactly its descriptors.
        #[test]
        fn written_manifests_parse(
            config in descriptor_json(),
            layers in proptest::collection::vec(descriptor_json(), 0..8),
            index in any::<bool>(),
            artifact in proptest::option::of("[a-z]{1,8}/[a-z0-9][a-z0-9.+-]{0,30}"),
        ) {
            let mut v = if index {
                serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
                    "manifests": layers.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>()})
            } else {
                serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.0,
                    "layers": layers.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>()})
            };
            if let Some(a) = &artifact {
                v["artifactType"] = Value::from(a.as_str());
            }
            let m = Manifest::parse(None, &serde_json::to_vec(&v).unwrap()).unwrap();
            let sizes = |ds: &[Descriptor]| ds.iter().map(|d| d.size).collect::<Vec<_>>();
            let layer_sizes: Vec<u64> = layers.iter().map(|(_, s)| *s).collect();
            if index {
                prop_assert_eq!(sizes(&m.children), layer_sizes);
                prop_assert!(m.blobs.is_empty());
            } else {
                let mut want = vec![config.1];
                want.extend(layer_sizes);
                prop_assert_eq!(sizes(&m.blobs), want);
            }
            if artifact.is_some() {
                prop_assert_eq!(m.artifact_type, artifact);
            }
        }

        /// `valid_media_type` is RFC 6838's grammar, checked against a regular expression.
        #[test]
        fn media_types_agree_with_rfc_6838(t in "[a-zA-Z0-9!#$&^_.+/ ;=-]{0,30}|[a-z]{1,3}/[a-z]{120,130}|\\PC{0,20}") {
            let re = regex_lite::Regex::new(
                r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$",
            )
            .unwrap();
            prop_assert_eq!(valid_media_type(&t), re.is_match(&t), "{:?}", t);
        }
    }

    /// Nesting far past serde_json's recursion limit is refused, not a stack overflow.
    #[test]
    fn deep_nesting_is_refused() {
        for open in ["[", "{\"a\":"] {
            let body = open.repeat(100_000);
            assert!(matches!(
                Manifest::parse(None, body.as_bytes()),
                Err(ManifestError::Invalid(_))
            ));
        }
    }
}
