//! Durable file-system steps: every file the store publishes is written
//! to tmp/, fsynced, renamed into place, and its directory fsynced, so a
//! crash leaves either the old state or the new one.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{ImageError, IoContext};

pub(super) fn fsync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir).at(dir)?.sync_all().at(dir)
}

/// Writes `bytes` to `path` atomically, staging in `tmp`.
pub(super) fn write_atomic(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let mut file = tempfile::NamedTempFile::new_in(tmp).at(tmp)?;
    file.write_all(bytes).at(file.path())?;
    file.as_file().sync_all().at(file.path())?;
    file.persist(path)
        .map_err(|e| ImageError::io(path, e.error))?;
    if let Some(parent) = path.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Renames into place; an existing destination means another import got
/// there first with the same content-addressed name, which is fine.
pub(super) fn rename_new(from: &Path, to: &Path) -> Result<(), ImageError> {
    if fs::symlink_metadata(to).is_ok() {
        return Ok(());
    }
    fs::rename(from, to).at(to)
}

/// Flushes everything staged on the store's file system (extracted layer
/// trees hold many files; one syncfs beats an fsync per file).
pub(super) fn sync_fs(root: &Path) -> Result<(), ImageError> {
    let dir = File::open(root).at(root)?;
    nix::unistd::syncfs(&dir).map_err(|e| ImageError::io(root, e.into()))
}

pub(super) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ImageError> {
    let bytes = fs::read(path).at(path)?;
    serde_json::from_slice(&bytes).map_err(|e| ImageError::BadConfig {
        what: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Removes a directory tree so that a crash midway never leaves a
/// half-deleted tree under its real name: rename into tmp/ first (which
/// `ImageStore::open` empties), then delete.
pub(super) fn remove_tree(tmp: &Path, path: &Path) -> Result<(), ImageError> {
    let grave = tempfile::Builder::new()
        .prefix("del-")
        .tempdir_in(tmp)
        .at(tmp)?;
    let target = grave.path().join("x");
    fs::rename(path, &target).at(path)?;
    // The tree is already out of the store; whatever fails to delete now
    // is cleared from tmp/ on the next open.
    if let Err(e) = grave.close() {
        tracing::warn!(path = %target.display(), error = %e, "leaving a deleted layer in tmp/");
    }
    Ok(())
}

/// Bytes of regular-file content under a tree.
pub(super) fn tree_size(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}
