//! Layers in overlayfs form: applying an OCI layer tar onto a directory,
//! packing an overlay upperdir back into an OCI layer tar, and Docker's
//! `diff` listing of an upperdir against its lowers.
//!
//! The two whiteout conventions met here:
//! - OCI tar: an empty file `.wh.NAME` deletes NAME; `.wh..wh..opq` in a
//!   directory hides everything below it from lower layers.
//! - overlayfs: a character device 0/0 named NAME deletes NAME; the xattr
//!   `trusted.overlay.opaque=y` on a directory makes it opaque.

use std::fs::Metadata;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::ImageError;

mod apply;
mod changes;
mod pack;

pub use apply::apply_layer;
pub use changes::{changes, Change, ChangeKind};
pub(crate) use pack::write_layer_tar_excluding;

/// The xattr overlayfs reads to treat a directory as opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
pub(crate) const WHITEOUT_PREFIX: &[u8] = b".wh.";
pub(crate) const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// aufs' own metadata entries (`.wh..wh.plnk`, ...) that some old images
/// still carry; they mean nothing to overlayfs.
pub(crate) const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";

/// An overlayfs whiteout: a character device with device number 0/0.
pub(crate) fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether overlayfs treats the directory at `path` as opaque.
pub(crate) fn is_opaque(path: &Path) -> bool {
    matches!(xattr::get(path, OPAQUE_XATTR), Ok(Some(v)) if v == b"y")
}

/// `symlink_metadata` that maps "not found" to None.
pub(crate) fn lstat(path: &Path) -> Result<Option<Metadata>, ImageError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ImageError::io(path, e)),
    }
}

/// Turns a tar entry name into a relative path inside the layer: leading
/// `/` and `./` dropped, `.` components skipped. None when a `..`
/// component would climb out of the layer root.
pub(crate) fn clean_rel(raw: &[u8]) -> Option<PathBuf> {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let mut out = PathBuf::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            // Refuse instead of clamping: a layer that names `..` is broken
            // or hostile, and silently rewriting it would hide that.
            b".." => return None,
            p => out.push(OsStr::from_bytes(p)),
        }
    }
    Some(out)
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Small helpers for building layer tars in tests.
    use tar::{Builder, EntryType, Header};

    pub struct TarBuilder(Builder<Vec<u8>>);

    impl TarBuilder {
        pub fn new() -> Self {
            Self(Builder::new(Vec::new()))
        }
        fn header(kind: EntryType, mode: u32, size: u64) -> Header {
            let mut h = Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h
        }
        pub fn dir(mut self, path: &str) -> Self {
            let mut h = Self::header(EntryType::Directory, 0o755, 0);
            self.0.append_data(&mut h, path, &[][..]).unwrap();
            self
        }
        pub fn file(mut self, path: &str, data: &[u8]) -> Self {
            let mut h = Self::header(EntryType::Regular, 0o644, data.len() as u64);
            self.0.append_data(&mut h, path, data).unwrap();
            self
        }
        pub fn file_owned(mut self, path: &str, data: &[u8], uid: u64, mode: u32) -> Self {
            let mut h = Self::header(EntryType::Regular, mode, data.len() as u64);
            h.set_uid(uid);
            h.set_gid(uid);
            self.0.append_data(&mut h, path, data).unwrap();
            self
        }
        pub fn symlink(mut self, path: &str, target: &str) -> Self {
            let mut h = Self::header(EntryType::Symlink, 0o777, 0);
            self.0.append_link(&mut h, path, target).unwrap();
            self
        }
        pub fn hardlink(mut self, path: &str, target: &str) -> Self {
            let mut h = Self::header(EntryType::Link, 0o644, 0);
            self.0.append_link(&mut h, path, target).unwrap();
            self
        }
        /// An entry whose name is written raw, bypassing the tar crate's
        /// own `..` check, to test that apply_layer refuses it.
        pub fn raw_file(mut self, name: &[u8], data: &[u8]) -> Self {
            let mut h = Self::header(EntryType::Regular, 0o644, data.len() as u64);
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }
        pub fn raw_hardlink(mut self, name: &str, target: &[u8]) -> Self {
            let mut h = Self::header(EntryType::Link, 0o644, 0);
            h.set_path(name).unwrap();
            let gnu = h.as_gnu_mut().unwrap();
            gnu.linkname[..target.len()].copy_from_slice(target);
            h.set_cksum();
            self.0.append(&h, &[][..]).unwrap();
            self
        }
        pub fn xattr_file(mut self, path: &str, data: &[u8], key: &str, value: &[u8]) -> Self {
            let pax_key = format!("SCHILY.xattr.{key}");
            self.0
                .append_pax_extensions([(pax_key.as_str(), value)])
                .unwrap();
            self.file(path, data)
        }
        pub fn finish(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }
}
