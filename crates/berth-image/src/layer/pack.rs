//! Packing an overlay upperdir into an OCI layer tar.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::{is_opaque, is_whiteout, OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::error::{ImageError, IoContext};

/// xattrs that describe overlayfs' own bookkeeping or the host's security
/// labels, never content a layer should carry.
fn skip_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name == b"security.selinux"
}

/// Writes the tar of `upper` to `out`: overlay whiteouts become `.wh.NAME`
/// files, opaque directories get a `.wh..wh..opq` entry, hard links inside
/// the tree are written once and linked after. Entries are in sorted order
/// and carry only numeric owners, so the same tree gives the same bytes.
/// Sockets are skipped (tar cannot hold them). Directories renamed with
/// overlayfs' redirect_dir and metacopy-only files are refused: their
/// content lives in a lower layer and the tar would silently lose it.
#[cfg(test)]
pub(crate) fn write_layer_tar(upper: &Path, out: impl Write) -> Result<(), ImageError> {
    write_layer_tar_excluding(upper, &[], out)
}

/// [`write_layer_tar`] leaving out the entries at `exclude` (paths relative
/// to `upper`), e.g. the /etc files a runtime generated in a container.
pub(crate) fn write_layer_tar_excluding(
    upper: &Path,
    exclude: &[&Path],
    out: impl Write,
) -> Result<(), ImageError> {
    let mut b = tar::Builder::new(out);
    let mut seen_inodes: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let walker = walkdir::WalkDir::new(upper)
        .min_depth(1)
        .follow_links(false)
        .sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));
    for entry in walker {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(upper).to_path_buf();
            ImageError::io(path, e.into())
        })?;
        let path = entry.path();
        let rel = path.strip_prefix(upper).unwrap_or(path);
        if exclude.contains(&rel) {
            continue;
        }
        let meta = entry
            .metadata()
            .map_err(|e| ImageError::io(path, e.into()))?;
        let ft = meta.file_type();
        let w = |r: std::io::Result<()>| r.map_err(|e| ImageError::io(path, e));

        let mut h = Header::new_gnu();
        h.set_uid(u64::from(meta.uid()));
        h.set_gid(u64::from(meta.gid()));
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_mode(meta.mode() & 0o7777);
        h.set_size(0);

        if is_whiteout(&meta) {
            let mut name = WHITEOUT_PREFIX.to_vec();
            name.extend_from_slice(rel.file_name().map(|n| n.as_bytes()).unwrap_or_default());
            let wh = rel.with_file_name(std::ffi::OsStr::from_bytes(&name));
            h.set_entry_type(EntryType::Regular);
            h.set_mode(0o600);
            w(b.append_data(&mut h, &wh, std::io::empty()))?;
            continue;
        }
        if ft.is_socket() {
            continue;
        }
        append_xattrs(&mut b, path)?;
        if ft.is_dir() {
            if xattr::get(path, "trusted.overlay.redirect")
                .ok()
                .flatten()
                .is_some()
            {
                return Err(ImageError::Unsupported {
                    path: path.to_path_buf(),
                    reason: "directory renamed with overlayfs redirect_dir (mount with redirect_dir=off)".into(),
                });
            }
            h.set_entry_type(EntryType::Directory);
            w(b.append_data(&mut h, rel, std::io::empty()))?;
            if is_opaque(path) {
                let mut oh = h.clone();
                oh.set_entry_type(EntryType::Regular);
                oh.set_mode(0o600);
                let marker = rel.join(std::ffi::OsStr::from_bytes(OPAQUE_MARKER));
                w(b.append_data(&mut oh, &marker, std::io::empty()))?;
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(path).at(path)?;
            h.set_entry_type(EntryType::Symlink);
            w(b.append_link(&mut h, rel, &target))?;
        } else {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = seen_inodes.get(&key) {
                    h.set_entry_type(EntryType::Link);
                    w(b.append_link(&mut h, rel, first))?;
                    continue;
                }
                seen_inodes.insert(key, rel.to_path_buf());
            }
            if ft.is_file() {
                if xattr::get(path, "trusted.overlay.metacopy")
                    .ok()
                    .flatten()
                    .is_some()
                {
                    return Err(ImageError::Unsupported {
                        path: path.to_path_buf(),
                        reason: "metacopy-only file (mount with metacopy=off)".into(),
                    });
                }
                let file = std::fs::File::open(path).at(path)?;
                h.set_entry_type(EntryType::Regular);
                h.set_size(meta.len());
                w(b.append_data(&mut h, rel, file))?;
            } else {
                let kind = if ft.is_char_device() {
                    EntryType::Char
                } else if ft.is_block_device() {
                    EntryType::Block
                } else {
                    EntryType::Fifo
                };
                h.set_entry_type(kind);
                if kind != EntryType::Fifo {
                    let rdev = meta.rdev();
                    w(h.set_device_major(nix::sys::stat::major(rdev) as u32))?;
                    w(h.set_device_minor(nix::sys::stat::minor(rdev) as u32))?;
                }
                w(b.append_data(&mut h, rel, std::io::empty()))?;
            }
        }
    }
    b.into_inner()
        .map_err(|e| ImageError::io(upper, e))?
        .flush()
        .at(upper)
}

/// Writes the entry's xattrs as a PAX header (`SCHILY.xattr.NAME`), in
/// sorted order so the bytes are stable.
fn append_xattrs<W: Write>(b: &mut tar::Builder<W>, path: &Path) -> Result<(), ImageError> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(()),
        Err(e) => return Err(ImageError::io(path, e)),
    };
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for name in names {
        let bytes = name.as_bytes();
        if skip_xattr(bytes) {
            continue;
        }
        let Ok(name) = std::str::from_utf8(bytes) else {
            continue;
        };
        if let Some(value) = xattr::get(path, name).at(path)? {
            records.push((format!("SCHILY.xattr.{name}"), value));
        }
    }
    if records.is_empty() {
        return Ok(());
    }
    records.sort();
    b.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .at(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{apply_layer, is_whiteout, OPAQUE_XATTR};
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    use std::fs;

    #[test]
    fn packs_whiteouts_opaque_dirs_and_hardlinks_deterministically() {
        let tmp = tempfile::tempdir().unwrap();
        let up = tmp.path().join("up");
        fs::create_dir_all(up.join("etc")).unwrap();
        fs::create_dir_all(up.join("var/cache")).unwrap();
        fs::write(up.join("etc/hosts"), "x").unwrap();
        fs::hard_link(up.join("etc/hosts"), up.join("etc/hosts.bak")).unwrap();
        std::os::unix::fs::symlink("hosts", up.join("etc/link")).unwrap();
        mknod(
            &up.join("etc/passwd"),
            SFlag::S_IFCHR,
            Mode::empty(),
            makedev(0, 0),
        )
        .unwrap();
        xattr::set(up.join("var/cache"), OPAQUE_XATTR, b"y").unwrap();
        xattr::set(up.join("etc/hosts"), "user.k", b"v").unwrap();

        let mut first = Vec::new();
        write_layer_tar(&up, &mut first).unwrap();
        let mut second = Vec::new();
        write_layer_tar(&up, &mut second).unwrap();
        assert_eq!(first, second);

        let mut names = Vec::new();
        let mut ar = tar::Archive::new(&first[..]);
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            names.push(
                e.path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_string(),
            );
        }
        assert_eq!(
            names,
            [
                "etc",
                "etc/hosts",
                "etc/hosts.bak",
                "etc/link",
                "etc/.wh.passwd",
                "var",
                "var/cache",
                "var/cache/.wh..wh..opq"
            ]
        );

        let back = tmp.path().join("back");
        apply_layer(&first[..], &back).unwrap();
        assert!(is_whiteout(
            &fs::symlink_metadata(back.join("etc/passwd")).unwrap()
        ));
        assert!(crate::layer::is_opaque(&back.join("var/cache")));
        assert_eq!(
            fs::metadata(back.join("etc/hosts")).unwrap().ino(),
            fs::metadata(back.join("etc/hosts.bak")).unwrap().ino()
        );
        assert_eq!(
            xattr::get(back.join("etc/hosts"), "user.k")
                .unwrap()
                .unwrap(),
            b"v"
        );
        // Repacking the applied tree gives the same bytes: diff_ids are stable.
        let mut third = Vec::new();
        write_layer_tar(&back, &mut third).unwrap();
        assert_eq!(first, third);
    }
}
