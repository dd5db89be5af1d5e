//! Registry errors, answered as the distribution spec's JSON error bodies:
//! `{"errors": [{"code": "BLOB_UNKNOWN", "message": "...", "detail": ...}]}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(String),
    #[error("blob upload unknown to registry: {0}")]
    BlobUploadUnknown(String),
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    /// A PATCH whose Content-Range does not start where the upload ends;
    /// `offset` is how many bytes the session holds.
    #[error("upload {id} holds {offset} bytes, the chunk starts at {start}")]
    RangeInvalid { id: String, offset: u64, start: u64 },
    #[error("provided digest did not match uploaded content: {0}")]
    DigestInvalid(String),
    #[error("manifest references a blob unknown to registry: {0}")]
    ManifestBlobUnknown(String),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    #[error("repository name not known to registry: {0}")]
    NameUnknown(String),
    #[error("manifest tag did not match URI: {0}")]
    TagInvalid(String),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("too many requests: {0}")]
    TooManyRequests(String),
    #[error("the operation is unsupported: {0}")]
    Unsupported(String),
    #[error("authentication required: {0}")]
    Unauthorized(String),
    /// A file-system step in the registry's store failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RegistryError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// The spec's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BlobUnknown(_) => "BLOB_UNKNOWN",
            Self::BlobUploadUnknown(_) => "BLOB_UPLOAD_UNKNOWN",
            Self::BlobUploadInvalid(_) | Self::RangeInvalid { .. } => "BLOB_UPLOAD_INVALID",
            Self::DigestInvalid(_) => "DIGEST_INVALID",
            Self::ManifestBlobUnknown(_) => "MANIFEST_BLOB_UNKNOWN",
            Self::ManifestInvalid(_) => "MANIFEST_INVALID",
            Self::ManifestUnknown(_) => "MANIFEST_UNKNOWN",
            Self::NameInvalid(_) => "NAME_INVALID",
            Self::NameUnknown(_) => "NAME_UNKNOWN",
            Self::TagInvalid(_) => "TAG_INVALID",
            Self::TooLarge(_) => "SIZE_INVALID",
            Self::TooManyRequests(_) => "TOOMANYREQUESTS",
            Self::Unsupported(_) => "UNSUPPORTED",
            Self::Unauthorized(_) => "UNAUTHORIZED",
            Self::Io { .. } => "UNKNOWN",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BlobUnknown(_)
            | Self::BlobUploadUnknown(_)
            | Self::ManifestUnknown(_)
            | Self::NameUnknown(_) => StatusCode::NOT_FOUND,
            Self::RangeInvalid { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unsupported(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        if matches!(self, Self::Io { .. }) {
            tracing::error!(error = %self, "registry storage failure");
        }
        let body = serde_json::json!({
            "errors": [{"code": self.code(), "message": self.to_string(), "detail": null}]
        });
        let mut resp = (self.status(), Json(body)).into_response();
        if let Self::RangeInvalid { id, offset, .. } = &self {
            // The client resumes from here.
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&super::handlers::range_value(*offset)) {
                h.insert("range", v);
            }
            if let Ok(v) = HeaderValue::from_str(id) {
                h.insert("docker-upload-uuid", v);
            }
        }
        resp
    }
}
