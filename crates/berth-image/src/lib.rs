//! berth's image side: a content-addressed OCI store of layers and image
//! configs, import and export of archives, layer diff and apply for
//! overlayfs, and Containerfile builds.
#![forbid(unsafe_code)]

pub mod archive;
pub mod build;
pub mod containerfile;
pub mod distribution;
pub mod dockerignore;
pub mod error;
pub mod layer;
pub mod store;

pub use error::ImageError;
pub use layer::{changes, Change, ChangeKind};
pub use store::{Image, ImageStore, LayerRecord, PruneReport};
