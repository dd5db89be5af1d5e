//! The image crate's error type. Every variant names the image reference,
//! file or archive entry involved, so one log line is enough to find it.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No image matches the reference (tag, id or id prefix).
    #[error("no such image: {0}")]
    NotFound(String),

    /// An id prefix matches more than one image.
    #[error("image reference {reference} is ambiguous: it matches {count} images")]
    Ambiguous { reference: String, count: usize },

    /// A container uses the image and `force` was not given.
    #[error("conflict: unable to remove {reference} ({id}): image is in use by a container (must force)")]
    InUse { reference: String, id: String },

    /// Deleting by id an image that several tags point to needs `force`.
    #[error("conflict: unable to delete {reference} ({id}): image is referenced by several tags: {tags} (must force)")]
    MultipleTags {
        reference: String,
        id: String,
        tags: String,
    },

    /// A reference or tag that does not parse.
    #[error(transparent)]
    Reference(#[from] berth_types::ParseError),

    /// A file-system operation in the store or on an input failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An import source is malformed; `what` names the entry inside it.
    #[error("bad archive {}: {what}: {reason}", path.display())]
    BadArchive {
        path: PathBuf,
        what: String,
        reason: String,
    },

    /// A layer tar stream has an entry that cannot be applied safely.
    #[error("bad layer{}: {reason}", if entry.is_empty() { String::new() } else { format!(" entry {entry}") })]
    BadLayer { entry: String, reason: String },

    /// An image config in the store (or given to create_image) is unusable.
    #[error("bad image config {what}: {reason}")]
    BadConfig { what: String, reason: String },

    /// create_image or layer_paths named a layer the store does not hold.
    #[error("layer {0} is not in the image store")]
    MissingLayer(String),

    /// An overlay upper directory uses a feature a layer tar cannot express.
    #[error("cannot turn {} into a layer: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },

    /// Another ImageStore (this process or another) holds the store lock.
    #[error("image store {} is locked by another user", path.display())]
    Locked { path: PathBuf },
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn bad_archive(
        path: impl Into<PathBuf>,
        what: impl Into<String>,
        reason: impl std::fmt::Display,
    ) -> Self {
        Self::BadArchive {
            path: path.into(),
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn bad_layer(entry: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::BadLayer {
            entry: entry.into(),
            reason: reason.to_string(),
        }
    }

    /// Puts a layer-level error into the context of the archive it came from,
    /// so the message names both the archive file and the entry.
    pub(crate) fn in_archive(self, archive: &std::path::Path, layer: &str) -> Self {
        match self {
            Self::BadLayer { entry, reason } => Self::BadArchive {
                path: archive.to_path_buf(),
                what: if entry.is_empty() {
                    format!("layer {layer}")
                } else {
                    format!("layer {layer}: entry {entry}")
                },
                reason,
            },
            other => other,
        }
    }
}

/// Shorthand for `map_err(|e| ImageError::io(path, e))`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for Result<T, io::Error> {
    fn at(self, path: &std::path::Path) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::io(path, e))
    }
}
