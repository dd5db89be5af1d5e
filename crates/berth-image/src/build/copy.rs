//! Writing COPY, ADD and WORKDIR results into a fresh overlay upper
//! directory, so `ImageStore::add_layer_from_dir` turns exactly the new
//! files into a layer.
//!
//! Parent directories that already exist below are recreated in the upper
//! directory with their lower mode and owner (as overlayfs' copy-up would),
//! so a COPY into /tmp does not reset its 1777 mode. Destination paths are
//! resolved through symlinks in the image (/bin -> usr/bin), so a COPY never
//! replaces such a link with a real directory.

use std::fs::{self, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::source::Entry;
use super::tree::Tree;

/// Ownership and mode rules for one COPY/ADD.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attrs {
    /// `--chown`, resolved.
    pub owner: Option<(u32, u32)>,
    /// `--chmod`.
    pub mode: Option<u32>,
    /// Keep source owners when no `--chown` (stages, images, archives).
    pub preserve_owner: bool,
}

pub(crate) struct Writer<'a> {
    pub upper: &'a Path,
    /// The image state below the upper directory.
    pub lower: &'a Tree,
}

impl Writer<'_> {
    /// The current view: the upper directory over the lower layers.
    pub fn view(&self) -> Tree {
        self.lower.with_top(self.upper)
    }

    /// Resolves an absolute image path to a clean relative one, following
    /// symlinks in its parents (and in the last component when
    /// `follow_last`).
    pub fn resolve(&self, abs: &str, follow_last: bool) -> io::Result<PathBuf> {
        self.view().resolve(Path::new(abs), follow_last)
    }

    /// Whether `rel` (already resolved) is a directory in the current view.
    pub fn is_dir(&self, rel: &Path) -> io::Result<bool> {
        Ok(self.view().lookup(rel)?.is_some_and(|f| f.meta.is_dir()))
    }

    /// Makes sure `rel` and its parents are directories in the upper
    /// directory. Directories that exist below keep their metadata; new
    /// ones get `new` (mode, uid, gid) for `rel` itself and 0755 root for
    /// parents.
    pub fn ensure_dir(&self, rel: &Path, new: Option<(u32, u32, u32)>) -> io::Result<()> {
        let comps: Vec<_> = rel.components().collect();
        let mut cur = PathBuf::new();
        for (i, c) in comps.iter().enumerate() {
            cur.push(c);
            let up = self.upper.join(&cur);
            match fs::symlink_metadata(&up) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => fs::remove_file(&up)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let below = self.lower.lookup(&cur)?.filter(|f| f.meta.is_dir());
            let (mode, uid, gid) = match (&below, new) {
                (Some(f), _) => (f.meta.mode() & 0o7777, f.meta.uid(), f.meta.gid()),
                (None, Some(n)) if i + 1 == comps.len() => n,
                (None, _) => (0o755, 0, 0),
            };
            fs::create_dir(&up)?;
            lchown(&up, Some(uid), Some(gid))?;
            fs::set_permissions(&up, fs::Permissions::from_mode(mode))?;
            if let Some(f) = below {
                copy_mtime(&f.meta, &up);
            }
        }
        Ok(())
    }

    /// Writes one source entry at `dest` (relative, resolved), replacing
    /// whatever the upper directory has there unless both are directories.
    pub fn put(&self, dest: &Path, e: &Entry, attrs: Attrs) -> io::Result<()> {
        if let Some(parent) = dest.parent() {
            self.ensure_dir(parent, None)?;
        }
        let target = self.upper.join(dest);
        let ft = e.meta.file_type();
        let (uid, gid) = attrs.owner.unwrap_or(if attrs.preserve_owner {
            (e.meta.uid(), e.meta.gid())
        } else {
            (0, 0)
        });
        let mode = attrs.mode.unwrap_or(e.meta.mode() & 0o7777);
        let existing = fs::symlink_metadata(&target).ok();
        if ft.is_dir() {
            match existing {
                Some(m) if m.is_dir() => {}
                Some(_) => {
                    fs::remove_file(&target)?;
                    fs::create_dir(&target)?;
                }
                None => fs::create_dir(&target)?,
            }
            lchown(&target, Some(uid), Some(gid))?;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
            return Ok(());
        }
        match existing {
            Some(m) if m.is_dir() => fs::remove_dir_all(&target)?,
            Some(_) => fs::remove_file(&target)?,
            None => {}
        }
        if ft.is_symlink() {
            symlink(fs::read_link(&e.real)?, &target)?;
            lchown(&target, Some(uid), Some(gid))?;
        } else if ft.is_file() {
            let mut from = fs::File::open(&e.real)?;
            let mut to = fs::File::create(&target)?;
            io::copy(&mut from, &mut to)?;
            drop(to);
            // chown before chmod: chown clears setuid/setgid bits.
            lchown(&target, Some(uid), Some(gid))?;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
            copy_mtime(&e.meta, &target);
        }
        // Sockets, fifos and devices in a source are skipped, as Docker's
        // context transfer drops them.
        Ok(())
    }
}

/// Best effort: a file's time does not change what the image runs.
fn copy_mtime(meta: &Metadata, path: &Path) {
    if let Ok(t) = meta.modified() {
        let f = if meta.is_dir() {
            fs::File::open(path)
        } else {
            fs::OpenOptions::new().write(true).open(path)
        };
        if let Ok(f) = f {
            let _ = f.set_modified(t);
        }
    }
}

/// Compression of a local ADD source that is a tar archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Archive {
    Tar,
    Gzip,
    Zstd,
}

/// Whether `path` is a (possibly compressed) tar archive ADD extracts.
/// Compressed non-tar files and unknown formats are copied as they are;
/// bzip2 and xz tars are refused rather than silently copied.
pub(crate) fn detect_archive(path: &Path) -> Result<Option<Archive>, String> {
    let io = |e: io::Error| format!("reading {}: {e}", path.display());
    let mut head = [0u8; 10];
    let n = read_full(&mut fs::File::open(path).map_err(io)?, &mut head).map_err(io)?;
    let head = &head[..n];
    let kind = if head.starts_with(&[0x1f, 0x8b]) {
        Archive::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Archive::Zstd
    } else if is_bzip2(head) || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        let mut block = [0u8; 512];
        let got = read_full(&mut fs::File::open(path).map_err(io)?, &mut block).map_err(io)?;
        if got == 512 && is_tar_header(&block) {
            return Ok(Some(Archive::Tar));
        }
        return Err(format!(
            "{} is bzip2 or xz compressed, which ADD does not extract here; use gzip or zstd, or extract it in a RUN step",
            path.display()
        ));
    } else {
        Archive::Tar
    };
    let mut block = [0u8; 512];
    let got = {
        let f = fs::File::open(path).map_err(io)?;
        let mut r = open_decoder(kind, f).map_err(io)?;
        read_full(&mut r, &mut block).unwrap_or(0)
    };
    Ok((got == 512 && is_tar_header(&block)).then_some(kind))
}

pub(crate) fn open_decoder(kind: Archive, f: fs::File) -> io::Result<Box<dyn Read>> {
    Ok(match kind {
        Archive::Tar => Box::new(f),
        Archive::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
        Archive::Zstd => Box::new(zstd::stream::read::Decoder::new(f)?),
    })
}

/// Extracts the archive at `path` into `dest` (a fresh staging directory),
/// keeping modes, owners and times as tar records them.
pub(crate) fn extract_archive(kind: Archive, path: &Path, dest: &Path) -> Result<(), String> {
    let err = |e: io::Error| format!("extracting {}: {e}", path.display());
    let f = fs::File::open(path).map_err(err)?;
    let mut ar = tar::Archive::new(open_decoder(kind, f).map_err(err)?);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_preserve_mtime(true);
    ar.set_overwrite(true);
    ar.set_unpack_xattrs(false);
    ar.unpack(dest).map_err(err)
}

/// `BZh`, a block size digit, then the block magic (pi in BCD).
fn is_bzip2(head: &[u8]) -> bool {
    head.len() == 10
        && head.starts_with(b"BZh")
        && (b'1'..=b'9').contains(&head[3])
        && head[4..] == [0x31, 0x41, 0x59, 0x26, 0x53, 0x59]
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A tar header block is recognised by its checksum, which covers old v7
/// archives without the `ustar` magic too.
fn is_tar_header(block: &[u8; 512]) -> bool {
    let field = &block[148..156];
    let text: String = field
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    let Ok(want) = u32::from_str_radix(text.trim(), 8) else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    sum == want && block.iter().any(|b| *b != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tar_bytes() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o640);
        h.set_uid(7);
        h.set_gid(8);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "dir/f", &b"hi"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn detects_archives() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |n: &str| tmp.path().join(n);
        fs::write(p("plain.tar"), tar_bytes()).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar_bytes()).unwrap();
        fs::write(p("t.tgz"), gz.finish().unwrap()).unwrap();
        fs::write(
            p("z.tar.zst"),
            zstd::encode_all(&tar_bytes()[..], 1).unwrap(),
        )
        .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"not a tar").unwrap();
        fs::write(p("x.gz"), gz.finish().unwrap()).unwrap();
        fs::write(p("text"), "hello").unwrap();
        fs::write(p("b.bz2"), b"BZh91AY&SY").unwrap();
        assert_eq!(detect_archive(&p("plain.tar")), Ok(Some(Archive::Tar)));
        assert_eq!(detect_archive(&p("t.tgz")), Ok(Some(Archive::Gzip)));
        assert_eq!(detect_archive(&p("z.tar.zst")), Ok(Some(Archive::Zstd)));
        assert_eq!(detect_archive(&p("x.gz")), Ok(None));
        assert_eq!(detect_archive(&p("text")), Ok(None));
        assert!(detect_archive(&p("b.bz2")).is_err());

        let out = tmp.path().join("out");
        fs::create_dir(&out).unwrap();
        extract_archive(Archive::Gzip, &p("t.tgz"), &out).unwrap();
        let m = fs::metadata(out.join("dir/f")).unwrap();
        assert_eq!((m.mode() & 0o777, m.uid(), m.gid()), (0o640, 7, 8));
    }

    #[test]
    fn ensure_dir_copies_lower_metadata_and_follows_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let lower = tmp.path().join("lower");
        let upper = tmp.path().join("upper");
        fs::create_dir_all(lower.join("tmp")).unwrap();
        fs::set_permissions(lower.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        lchown(lower.join("tmp"), Some(5), Some(6)).unwrap();
        fs::create_dir(&upper).unwrap();
        let tree = Tree::from_layers_bottom_first(std::slice::from_ref(&lower));
        let w = Writer {
            upper: &upper,
            lower: &tree,
        };
        w.ensure_dir(Path::new("tmp/new/leaf"), Some((0o700, 9, 9)))
            .unwrap();
        let m = fs::metadata(upper.join("tmp")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o1777, 5, 6));
        let m = fs::metadata(upper.join("tmp/new")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o755, 0));
        let m = fs::metadata(upper.join("tmp/new/leaf")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o700, 9));
    }
}
