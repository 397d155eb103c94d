//! The one place where failures become OCI error JSON with the spec's code and status.

use crate::digest::DigestError;
use crate::registry::manifest::ManifestError;
use crate::registry::ReferenceError;
use crate::storage::StoreError;

/// An OCI distribution error code (plus distribution's RANGE_INVALID and PAGINATION_NUMBER_INVALID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Code {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    TagInvalid,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unsupported,
    RangeInvalid,
    PaginationNumberInvalid,
    Unavailable,
    Unknown,
    Unauthorized,
    Denied,
    TooManyRequests,
}

impl Code {
    fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::TagInvalid => "TAG_INVALID",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::Unsupported => "UNSUPPORTED",
            Code::RangeInvalid => "RANGE_INVALID",
            Code::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            Code::Unavailable => "UNAVAILABLE",
            Code::Unknown => "UNKNOWN",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::TooManyRequests => "TOOMANYREQUESTS",
        }
    }
}

/// A failed request: status, code, message, optional detail and extra headers.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// OCI error code.
    pub code: Code,
    /// Human-readable message: says what was wrong and, where it helps, what to do.
    pub message: String,
    /// Structured detail (JSON), if any.
    pub detail: Option<serde_json::Value>,
    /// Headers that belong with this error (e.g. `Range` on a 416 during upload).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: u16, code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    /// Adds a detail object.
    pub fn detail(mut self, detail: serde_json::Value) -> ApiError {
        self.detail = Some(detail);
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: &'static str, value: String) -> ApiError {
        self.headers.push((name, value));
        self
    }

    /// The OCI error body.
    pub fn body(&self) -> Vec<u8> {
        let mut e = serde_json::json!({ "code": self.code.as_str(), "message": self.message });
        if let Some(d) = &self.detail {
            e["detail"] = d.clone();
        }
        serde_json::to_vec(&serde_json::json!({ "errors": [e] })).expect("JSON serialises")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::RepoUnknown => ApiError::new(
                404,
                Code::NameUnknown,
                "repository name not known to registry",
            ),
            StoreError::BlobUnknown => {
                ApiError::new(404, Code::BlobUnknown, "blob unknown to registry")
            }
            StoreError::ManifestUnknown => {
                ApiError::new(404, Code::ManifestUnknown, "manifest unknown")
            }
            StoreError::UploadUnknown => ApiError::new(
                404,
                Code::BlobUploadUnknown,
                "blob upload unknown to registry",
            ),
            StoreError::UploadOffset(n) => ApiError::new(
                416,
                Code::RangeInvalid,
                format!("upload is at offset {n}: send the next chunk from there"),
            )
            .header("Range", range_header(n)),
            StoreError::ManifestBlobUnknown(d) => ApiError::new(
                400,
                Code::ManifestBlobUnknown,
                format!(
                    "manifest references {d}, which this repository does not have: push it first"
                ),
            )
            .detail(serde_json::json!({ "digest": d })),
            StoreError::ManifestRefMismatch(m) | StoreError::ManifestInvalid(m) => {
                ApiError::new(400, Code::ManifestInvalid, m)
            }
            StoreError::Quota(q) => {
                // 403 DENIED: Harbor's answer for a quota; the message names the quota.
                log::warn!("push refused: {q}");
                ApiError::new(403, Code::Denied, q.to_string()).detail(serde_json::json!({
                    "quota": q.quota, "limit": q.limit, "used": q.used, "needs": q.needs,
                }))
            }
            e @ StoreError::TagImmutable { .. } => {
                // As Amazon ECR answers docker for an immutable tag.
                ApiError::new(400, Code::TagInvalid, e.to_string())
            }
            StoreError::Full => {
                log::warn!("storage full: refusing upload data");
                ApiError::new(
                    507,
                    Code::Unavailable,
                    "registry storage is full: delete images or free disk space, then resume",
                )
            }
            StoreError::Unavailable => ApiError::new(
                503,
                Code::Unavailable,
                "registry storage is recovering from an I/O error: retry shortly",
            )
            .header("Retry-After", "1".to_owned()),
            StoreError::Integrity(m) => {
                log::error!("integrity error: {m}");
                ApiError::new(
                    500,
                    Code::Unknown,
                    "stored data failed its integrity check (see the registry's log)",
                )
            }
            e @ StoreError::Quarantined(_) => ApiError::new(404, Code::BlobUnknown, e.to_string()),
            StoreError::Keys(m) => ApiError::new(400, Code::Unsupported, m),
            StoreError::UserUnknown => ApiError::new(404, Code::Unsupported, "no such user"),
            e @ (StoreError::DomainChanged(_)
            | StoreError::RepoExists(_)
            | StoreError::UserExists) => ApiError::new(409, Code::Unsupported, e.to_string()),
            e @ (StoreError::Corrupt(_) | StoreError::Db(_)) => {
                log::error!("{e}");
                ApiError::new(500, Code::Unknown, "internal storage error")
            }
        }
    }
}

impl From<DigestError> for ApiError {
    fn from(e: DigestError) -> ApiError {
        ApiError::new(400, Code::DigestInvalid, e.to_string())
    }
}

impl From<ReferenceError> for ApiError {
    fn from(e: ReferenceError) -> ApiError {
        match e {
            ReferenceError::Digest(d) => d.into(),
            ReferenceError::Tag => ApiError::new(
                400,
                Code::ManifestInvalid,
                "invalid tag: use [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127} or a digest",
            ),
        }
    }
}

impl From<ManifestError> for ApiError {
    fn from(e: ManifestError) -> ApiError {
        match e {
            ManifestError::Invalid(m) => ApiError::new(400, Code::ManifestInvalid, m),
            ManifestError::Unsupported(m) => ApiError::new(415, Code::Unsupported, m),
        }
    }
}

/// The `Range` header value for an upload holding `received` bytes (distribution's form:
/// `0-0` when empty).
pub fn range_header(received: u64) -> String {
    format!("0-{}", received.saturating_sub(1))
}
