//! Applying an OCI layer tar onto a directory in overlayfs form.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use super::{clean_rel, lstat, OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_META_PREFIX, WHITEOUT_PREFIX};
use crate::error::{ImageError, IoContext};

/// Applies an OCI layer tar stream onto `dest` (created if missing) in
/// overlay form: `.wh.NAME` becomes a character device 0/0 named NAME and
/// `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory.
///
/// Entries that would land outside `dest` are refused: `..` components, a
/// path whose parent inside `dest` is a symlink (a symlink entry followed by
/// `link/file` would write through it), and hard links to such paths.
/// Ownership, mode, mtime, xattrs (PAX `SCHILY.xattr.*`), device nodes,
/// fifos, symlinks and hard links are preserved, which needs root.
///
/// Returns the number of bytes of regular-file content written.
pub fn apply_layer(tar: impl Read, dest: &Path) -> Result<u64, ImageError> {
    fs::create_dir_all(dest).at(dest)?;
    let mut archive = tar::Archive::new(tar);
    let entries = archive
        .entries()
        .map_err(|e| ImageError::bad_layer("first entry", e))?;
    let mut applier = Applier {
        dest,
        safe_dirs: HashSet::new(),
        dirs: Vec::new(),
        bytes: 0,
    };
    let mut last = String::new();
    for entry in entries {
        // A read error here is about the entry after the last good one.
        let mut entry =
            entry.map_err(|e| ImageError::bad_layer(crate::archive::entry_after(&last), e))?;
        last = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        applier.apply(&mut entry, &last)?;
    }
    applier.finish()?;
    Ok(applier.bytes)
}

struct Applier<'a> {
    dest: &'a Path,
    /// Directories under `dest` known to be real directories (not
    /// symlinks), so each entry does not lstat every ancestor again.
    safe_dirs: HashSet<PathBuf>,
    /// Directory metadata is applied last: creating children would bump the
    /// mtime, and a read-only mode would block them for a non-root caller.
    dirs: Vec<(PathBuf, u32, TimeSpec)>,
    bytes: u64,
}

/// The metadata of one entry, with PAX records taking precedence over the
/// fixed header fields as in GNU tar and Go's archive/tar.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Applier<'_> {
    fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<(), ImageError> {
        let bad = |reason: &str| ImageError::bad_layer(name, reason);
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let rel =
            clean_rel(&entry.path_bytes()).ok_or_else(|| bad("path escapes the layer root"))?;
        let Some(file_name) = rel.file_name().map(|n| n.as_encoded_bytes().to_vec()) else {
            // The layer root itself ("./"): its metadata belongs to whatever
            // directory the layer is mounted on, not to the layer.
            return Ok(());
        };
        let meta = read_meta(entry, name)?;
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let parent = self.dest.join(parent_rel);
        self.ensure_dir_chain(parent_rel, name)?;

        if file_name.starts_with(WHITEOUT_PREFIX) {
            if file_name == OPAQUE_MARKER {
                return xattr::set(&parent, OPAQUE_XATTR, b"y").at(&parent);
            }
            if file_name.starts_with(WHITEOUT_META_PREFIX) {
                return Ok(());
            }
            let target = &file_name[WHITEOUT_PREFIX.len()..];
            let path = parent.join(OsStr::from_bytes(target));
            self.remove_existing(&path)?;
            mknod(&path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                .map_err(|e| ImageError::io(&path, e.into()))?;
            lchown(&path, Some(meta.uid), Some(meta.gid)).at(&path)?;
            return set_mtime(&path, meta.mtime);
        }

        let path = self.dest.join(&rel);
        match kind {
            EntryType::Directory => {
                match lstat(&path)? {
                    Some(m) if m.is_dir() => {}
                    Some(_) => {
                        self.remove_existing(&path)?;
                        fs::create_dir(&path).at(&path)?;
                    }
                    None => fs::create_dir(&path).at(&path)?,
                }
                self.safe_dirs.insert(path.clone());
                lchown(&path, Some(meta.uid), Some(meta.gid)).at(&path)?;
                set_xattrs(&path, &meta.xattrs, false)?;
                self.dirs.push((path, meta.mode, meta.mtime));
                Ok(())
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.remove_existing(&path)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .at(&path)?;
                self.bytes += copy_entry(entry, &mut file, name, &path)?;
                drop(file);
                self.finish_node(&path, &meta)
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad("symlink without a target"))?;
                self.remove_existing(&path)?;
                let target = OsStr::from_bytes(&target);
                std::os::unix::fs::symlink(target, &path).at(&path)?;
                lchown(&path, Some(meta.uid), Some(meta.gid)).at(&path)?;
                set_xattrs(&path, &meta.xattrs, true)?;
                set_mtime(&path, meta.mtime)
            }
            EntryType::Link => {
                let raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad("hard link without a target"))?;
                let target_rel = clean_rel(&raw)
                    .ok_or_else(|| bad("hard link target escapes the layer root"))?;
                if target_rel.as_os_str().is_empty() {
                    return Err(bad("hard link to the layer root"));
                }
                let target_parent = target_rel.parent().unwrap_or(Path::new(""));
                self.check_dir_chain(target_parent, name)?;
                let target = self.dest.join(&target_rel);
                match lstat(&target)? {
                    None => return Err(bad("hard link target does not exist in this layer")),
                    Some(m) if m.is_dir() => return Err(bad("hard link to a directory")),
                    Some(_) => {}
                }
                if target == path {
                    return Ok(());
                }
                self.remove_existing(&path)?;
                // linkat without AT_SYMLINK_FOLLOW: a link to a symlink links
                // the symlink itself, never what it points to.
                fs::hard_link(&target, &path).at(&path)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let sflag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                self.remove_existing(&path)?;
                mknod(
                    &path,
                    sflag,
                    Mode::empty(),
                    makedev(major.into(), minor.into()),
                )
                .map_err(|e| ImageError::io(&path, e.into()))?;
                self.finish_node(&path, &meta)
            }
            other => {
                tracing::warn!(entry = name, kind = ?other, "skipping layer entry of unsupported type");
                Ok(())
            }
        }
    }

    /// Ownership, then mode (chown clears set-id bits), then xattrs (chown
    /// also clears security.capability), then the mtime.
    fn finish_node(&self, path: &Path, meta: &Meta) -> Result<(), ImageError> {
        lchown(path, Some(meta.uid), Some(meta.gid)).at(path)?;
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode)).at(path)?;
        set_xattrs(path, &meta.xattrs, false)?;
        set_mtime(path, meta.mtime)
    }

    /// Makes sure every directory from `dest` down to `dest/rel` exists and
    /// is a real directory, creating missing ones (mode 0755) as Docker does.
    fn ensure_dir_chain(&mut self, rel: &Path, name: &str) -> Result<(), ImageError> {
        let mut cur = self.dest.to_path_buf();
        for comp in rel.components() {
            cur.push(comp);
            if self.safe_dirs.contains(&cur) {
                continue;
            }
            match lstat(&cur)? {
                None => fs::create_dir(&cur).at(&cur)?,
                Some(m) if m.file_type().is_symlink() => {
                    return Err(ImageError::bad_layer(
                        name,
                        format!("parent {} is a symlink", comp.as_os_str().to_string_lossy()),
                    ))
                }
                Some(m) if !m.is_dir() => {
                    return Err(ImageError::bad_layer(
                        name,
                        format!(
                            "parent {} is not a directory",
                            comp.as_os_str().to_string_lossy()
                        ),
                    ))
                }
                Some(_) => {}
            }
            self.safe_dirs.insert(cur.clone());
        }
        Ok(())
    }

    /// Like ensure_dir_chain but creates nothing: for hard-link targets.
    fn check_dir_chain(&self, rel: &Path, name: &str) -> Result<(), ImageError> {
        let mut cur = self.dest.to_path_buf();
        for comp in rel.components() {
            cur.push(comp);
            if self.safe_dirs.contains(&cur) {
                continue;
            }
            match lstat(&cur)? {
                Some(m) if m.is_dir() => {}
                _ => {
                    return Err(ImageError::bad_layer(
                        name,
                        "hard link target is not below a real directory of this layer",
                    ))
                }
            }
        }
        Ok(())
    }

    fn remove_existing(&mut self, path: &Path) -> Result<(), ImageError> {
        match lstat(path)? {
            None => Ok(()),
            Some(m) if m.is_dir() => {
                // Whatever was cached below it is gone.
                self.safe_dirs.retain(|d| !d.starts_with(path));
                fs::remove_dir_all(path).at(path)
            }
            Some(_) => fs::remove_file(path).at(path),
        }
    }

    fn finish(&mut self) -> Result<(), ImageError> {
        for (path, mode, mtime) in self.dirs.iter().rev() {
            // A later entry may have replaced the directory.
            if !matches!(lstat(path)?, Some(m) if m.is_dir()) {
                continue;
            }
            fs::set_permissions(path, fs::Permissions::from_mode(*mode)).at(path)?;
            set_mtime(path, *mtime)?;
        }
        Ok(())
    }
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Meta, ImageError> {
    let h = entry.header();
    let field = |r: io::Result<u64>, what: &str| {
        r.map_err(|e| ImageError::bad_layer(name, format!("bad {what} field: {e}")))
    };
    let mode = field(h.mode().map(u64::from), "mode")? as u32 & 0o7777;
    let mut uid = field(h.uid(), "uid")?;
    let mut gid = field(h.gid(), "gid")?;
    let secs = i64::try_from(field(h.mtime(), "mtime")?).unwrap_or(i64::MAX);
    let mut mtime = TimeSpec::new(secs, 0);
    let mut xattrs = Vec::new();
    let pax = entry
        .pax_extensions()
        .map_err(|e| ImageError::bad_layer(name, format!("bad pax header: {e}")))?;
    if let Some(pax) = pax {
        for ext in pax {
            let ext =
                ext.map_err(|e| ImageError::bad_layer(name, format!("bad pax record: {e}")))?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            if let Some(attr) = key.strip_prefix("SCHILY.xattr.") {
                xattrs.push((attr.to_string(), value.to_vec()));
                continue;
            }
            let text = std::str::from_utf8(value).unwrap_or("");
            match key {
                "uid" => uid = text.parse().unwrap_or(uid),
                "gid" => gid = text.parse().unwrap_or(gid),
                "mtime" => {
                    if let Some(t) = parse_pax_time(text) {
                        mtime = t;
                    }
                }
                _ => {}
            }
        }
    }
    let id = |v: u64, what: &str| {
        u32::try_from(v)
            .map_err(|_| ImageError::bad_layer(name, format!("{what} {v} out of range")))
    };
    Ok(Meta {
        mode,
        uid: id(uid, "uid")?,
        gid: id(gid, "gid")?,
        mtime,
        xattrs,
    })
}

/// PAX times are decimal seconds with an optional fraction: "1700000000.5".
fn parse_pax_time(s: &str) -> Option<TimeSpec> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        nanos += i64::from(c.to_digit(10)?) * 10i64.pow(8 - i as u32);
    }
    if secs < 0 && nanos > 0 {
        return Some(TimeSpec::new(secs - 1, 1_000_000_000 - nanos));
    }
    Some(TimeSpec::new(secs, nanos))
}

/// Copies an entry's content, telling read errors (bad archive) from write
/// errors (the store's disk).
fn copy_entry(
    src: &mut impl Read,
    dst: &mut fs::File,
    name: &str,
    path: &Path,
) -> Result<u64, ImageError> {
    let mut buf = vec![0u8; 128 * 1024];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ImageError::bad_layer(name, e)),
        };
        dst.write_all(&buf[..n]).at(path)?;
        total += n as u64;
    }
}

fn set_xattrs(
    path: &Path,
    xattrs: &[(String, Vec<u8>)],
    is_symlink: bool,
) -> Result<(), ImageError> {
    for (key, value) in xattrs {
        if let Err(e) = xattr::set(path, key, value) {
            // Symlinks cannot carry user.* xattrs on Linux, and some file
            // systems lack xattr support: neither should fail the layer.
            let unsupported = e.raw_os_error() == Some(libc::EOPNOTSUPP);
            if is_symlink || unsupported {
                tracing::warn!(path = %path.display(), key, error = %e, "xattr not applied");
                continue;
            }
            return Err(ImageError::io(path, e));
        }
    }
    Ok(())
}

fn set_mtime(path: &Path, mtime: TimeSpec) -> Result<(), ImageError> {
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &mtime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| ImageError::io(path, e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::testutil::TarBuilder;
    use crate::layer::{is_opaque, is_whiteout};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn applies_files_links_whiteouts_and_opaque_dirs() {
        let tar = TarBuilder::new()
            .dir("etc")
            .file("etc/hosts", b"127.0.0.1 localhost\n")
            .file_owned("etc/shadow", b"secret", 42, 0o4640)
            .symlink("etc/alias", "/etc/hosts")
            .hardlink("etc/hosts2", "etc/hosts")
            .file("gone/.wh.old", b"")
            .dir("var")
            .file("var/.wh..wh..opq", b"")
            .file("var/new", b"x")
            .file("deep/a/b/c", b"abc")
            .xattr_file("bin/ping", b"elf", "user.test", b"v1")
            .finish();
        let dir = tempfile::tempdir().unwrap();
        let bytes = apply_layer(&tar[..], dir.path()).unwrap();
        assert_eq!(bytes, 20 + 6 + 1 + 3 + 3);
        let root = dir.path();
        assert_eq!(
            fs::read(root.join("etc/hosts2")).unwrap(),
            b"127.0.0.1 localhost\n"
        );
        assert_eq!(
            fs::metadata(root.join("etc/hosts")).unwrap().ino(),
            fs::metadata(root.join("etc/hosts2")).unwrap().ino()
        );
        let shadow = fs::metadata(root.join("etc/shadow")).unwrap();
        assert_eq!((shadow.uid(), shadow.mode() & 0o7777), (42, 0o4640));
        assert_eq!(
            fs::read_link(root.join("etc/alias")).unwrap(),
            Path::new("/etc/hosts")
        );
        let wh = fs::symlink_metadata(root.join("gone/old")).unwrap();
        assert!(is_whiteout(&wh));
        assert!(is_opaque(&root.join("var")));
        assert!(!is_opaque(&root.join("etc")));
        assert_eq!(fs::read(root.join("deep/a/b/c")).unwrap(), b"abc");
        assert_eq!(
            xattr::get(root.join("bin/ping"), "user.test")
                .unwrap()
                .as_deref(),
            Some(&b"v1"[..])
        );
        assert_eq!(
            fs::metadata(root.join("etc/hosts")).unwrap().mtime(),
            1_700_000_000
        );
    }

    #[test]
    fn refuses_dotdot_entries() {
        let tar = TarBuilder::new().raw_file(b"../escape", b"x").finish();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("layer");
        let err = apply_layer(&tar[..], &dest).unwrap_err().to_string();
        assert!(
            err.contains("../escape") && err.contains("escapes"),
            "{err}"
        );
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn refuses_writing_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let tar = TarBuilder::new()
            .symlink("evil", outside.to_str().unwrap())
            .file("evil/pwned", b"x")
            .finish();
        let err = apply_layer(&tar[..], &dir.path().join("layer"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("evil/pwned") && err.contains("symlink"),
            "{err}"
        );
        assert!(!outside.join("pwned").exists());
    }

    #[test]
    fn refuses_hardlinks_out_of_the_layer() {
        let dir = tempfile::tempdir().unwrap();
        for target in [&b"../../etc/passwd"[..], b"evil/passwd"] {
            let tar = TarBuilder::new()
                .symlink("evil", "/etc")
                .raw_hardlink("h", target)
                .finish();
            let dest = dir.path().join("layer");
            let err = apply_layer(&tar[..], &dest).unwrap_err().to_string();
            assert!(err.contains("hard link"), "{err}");
            assert!(!dest.join("h").exists());
            fs::remove_dir_all(&dest).unwrap();
        }
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let tar = TarBuilder::new()
            .file("a", b"file")
            .dir("a")
            .file("a/b", b"1")
            .symlink("c", "a")
            .file("c", b"2")
            .finish();
        let dir = tempfile::tempdir().unwrap();
        apply_layer(&tar[..], dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join("a/b")).unwrap(), b"1");
        assert!(fs::symlink_metadata(dir.path().join("c"))
            .unwrap()
            .is_file());
    }

    #[test]
    fn applies_device_nodes_and_fifos() {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, major, minor) in [
            ("dev/null", EntryType::Char, 1, 3),
            ("dev/loop0", EntryType::Block, 7, 0),
            ("run/fifo", EntryType::Fifo, 0, 0),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(0o666);
            h.set_size(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
            b.append_data(&mut h, name, std::io::empty()).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        apply_layer(&tar[..], dir.path()).unwrap();
        use std::os::unix::fs::FileTypeExt;
        let null = fs::symlink_metadata(dir.path().join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), makedev(1, 3));
        assert_eq!(null.mode() & 0o7777, 0o666);
        let lp = fs::symlink_metadata(dir.path().join("dev/loop0")).unwrap();
        assert!(lp.file_type().is_block_device());
        assert!(fs::symlink_metadata(dir.path().join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
    }

    #[test]
    fn pax_time_parses_fractions() {
        let t = parse_pax_time("1700000000.25").unwrap();
        assert_eq!((t.tv_sec(), t.tv_nsec()), (1_700_000_000, 250_000_000));
        assert!(parse_pax_time("x").is_none());
    }
}
