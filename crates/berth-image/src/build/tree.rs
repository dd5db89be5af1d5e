//! A read-only view of a file tree made of stacked directories: the
//! overlayfs merge of extracted layers (top first, with whiteouts and
//! opaque directories), or a single plain directory such as the build
//! context. The builder uses it to look things up in the image being built
//! without mounting anything.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::Metadata;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::layer::{is_opaque, is_whiteout};

/// How many symlinks one path resolution may follow, as Linux's limit.
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, Clone)]
pub(crate) struct Tree {
    /// Top layer first.
    layers: Vec<PathBuf>,
    /// Whether whiteouts and opaque directories mean anything (true for
    /// image layers, false for a build context).
    overlay: bool,
}

/// An entry of the merged view: the real path holding it and its metadata.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub real: PathBuf,
    pub meta: Metadata,
}

fn lstat(p: &Path) -> io::Result<Option<Metadata>> {
    match std::fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        // A file where a directory is expected (ENOTDIR) also means absent.
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A layer root may be a symlink to the layer tree (the store's short
/// names), so follow it.
fn stat_root(p: &Path) -> io::Result<Option<Metadata>> {
    match std::fs::metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The normal components of a path relative to the tree root.
fn components(rel: &Path) -> Vec<OsString> {
    rel.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            _ => None,
        })
        .collect()
}

impl Tree {
    /// Layers given bottom first, as `ImageStore::layer_paths` returns them.
    pub fn from_layers_bottom_first(layers: &[PathBuf]) -> Self {
        Self {
            layers: layers.iter().rev().cloned().collect(),
            overlay: true,
        }
    }

    /// A plain directory (no whiteout handling).
    pub fn plain(dir: &Path) -> Self {
        Self {
            layers: vec![dir.to_path_buf()],
            overlay: false,
        }
    }

    /// Puts `dir` on top of the view (an upper directory being written).
    pub fn with_top(&self, dir: &Path) -> Self {
        let mut layers = vec![dir.to_path_buf()];
        layers.extend(self.layers.iter().cloned());
        Self {
            layers,
            overlay: self.overlay,
        }
    }

    /// The visible entry at `rel` (a clean relative path; symlinks in it are
    /// not followed), or None when absent or whited out.
    pub fn lookup(&self, rel: &Path) -> io::Result<Option<Found>> {
        let comps = components(rel);
        if comps.is_empty() {
            for layer in &self.layers {
                if let Some(meta) = stat_root(layer)? {
                    return Ok(Some(Found {
                        real: layer.clone(),
                        meta,
                    }));
                }
            }
            return Ok(None);
        }
        'layers: for layer in &self.layers {
            let mut cur = layer.clone();
            let mut opaque_above = false;
            for (i, comp) in comps.iter().enumerate() {
                cur.push(comp);
                let Some(meta) = lstat(&cur)? else {
                    if opaque_above {
                        return Ok(None);
                    }
                    continue 'layers;
                };
                if self.overlay && is_whiteout(&meta) {
                    return Ok(None);
                }
                if i + 1 == comps.len() {
                    return Ok(Some(Found { real: cur, meta }));
                }
                if !meta.is_dir() {
                    // A non-directory here hides everything below it.
                    return Ok(None);
                }
                if self.overlay && is_opaque(&cur) {
                    opaque_above = true;
                }
            }
        }
        Ok(None)
    }

    /// The merged listing of the directory at `rel`, sorted by name.
    pub fn read_dir(&self, rel: &Path) -> io::Result<Vec<(OsString, Found)>> {
        let comps = components(rel);
        let mut seen: BTreeMap<OsString, Option<Found>> = BTreeMap::new();
        'layers: for layer in &self.layers {
            let mut cur = layer.clone();
            let mut opaque = false;
            for comp in &comps {
                cur.push(comp);
                let Some(meta) = lstat(&cur)? else {
                    if opaque {
                        break 'layers;
                    }
                    continue 'layers;
                };
                if (self.overlay && is_whiteout(&meta)) || !meta.is_dir() {
                    break 'layers;
                }
                if self.overlay && is_opaque(&cur) {
                    opaque = true;
                }
            }
            if comps.is_empty() && stat_root(&cur)?.is_none_or(|m| !m.is_dir()) {
                continue;
            }
            for entry in std::fs::read_dir(&cur)? {
                let entry = entry?;
                let name = entry.file_name();
                if seen.contains_key(&name) {
                    continue;
                }
                let real = entry.path();
                let meta = std::fs::symlink_metadata(&real)?;
                let visible = !(self.overlay && is_whiteout(&meta));
                seen.insert(name, visible.then_some(Found { real, meta }));
            }
            if opaque {
                break;
            }
        }
        Ok(seen
            .into_iter()
            .filter_map(|(n, f)| f.map(|f| (n, f)))
            .collect())
    }

    /// Resolves symlinks in `rel` inside the tree as if it were the root
    /// directory (`..` stops at the root, absolute targets start there).
    /// The last component is followed only when `follow_last`. Returns the
    /// resolved clean relative path, which may not exist.
    pub fn resolve(&self, rel: &Path, follow_last: bool) -> io::Result<PathBuf> {
        let mut pending: Vec<OsString> = components_with_dots(rel);
        pending.reverse();
        let mut out: Vec<OsString> = Vec::new();
        let mut followed = 0usize;
        while let Some(comp) = pending.pop() {
            if comp == ".." {
                out.pop();
                continue;
            }
            if comp == "." {
                continue;
            }
            out.push(comp);
            let is_last = pending.is_empty();
            if is_last && !follow_last {
                break;
            }
            let path: PathBuf = out.iter().collect();
            let Some(found) = self.lookup(&path)? else {
                continue;
            };
            if !found.meta.file_type().is_symlink() {
                continue;
            }
            followed += 1;
            if followed > MAX_SYMLINKS {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("too many levels of symbolic links in {}", rel.display()),
                ));
            }
            let target = std::fs::read_link(&found.real)?;
            out.pop();
            if target.is_absolute() {
                out.clear();
            }
            let mut more = components_with_dots(&target);
            more.reverse();
            pending.extend(more);
        }
        Ok(out.iter().collect())
    }
}

/// Components of a path keeping `.` and `..` (as strings), dropping the
/// root and empty parts.
fn components_with_dots(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::CurDir => Some(OsString::from(".")),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mkfile(p: &Path, data: &str) {
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(p, data).unwrap();
    }

    fn whiteout(p: &Path) {
        // mknod needs root; the builder runs as root, and so do these tests.
        let status = std::process::Command::new("mknod")
            .arg(p)
            .args(["c", "0", "0"])
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn merged_lookup_and_listing() {
        let tmp = tempfile::tempdir().unwrap();
        let (l1, l2) = (tmp.path().join("l1"), tmp.path().join("l2"));
        mkfile(&l1.join("etc/passwd"), "root");
        mkfile(&l1.join("etc/group"), "g");
        mkfile(&l1.join("data/old"), "old");
        mkfile(&l1.join("gone"), "x");
        mkfile(&l2.join("etc/passwd"), "root2");
        std::fs::create_dir_all(l2.join("data")).unwrap();
        xattr::set(l2.join("data"), "trusted.overlay.opaque", b"y").unwrap();
        mkfile(&l2.join("data/new"), "new");
        whiteout(&l2.join("gone"));
        symlink("etc", l2.join("link")).unwrap();

        let t = Tree::from_layers_bottom_first(&[l1.clone(), l2.clone()]);
        let read = |p: &str| {
            t.lookup(Path::new(p))
                .unwrap()
                .map(|f| std::fs::read_to_string(f.real).unwrap_or_default())
        };
        assert_eq!(read("etc/passwd").as_deref(), Some("root2"));
        assert_eq!(read("etc/group").as_deref(), Some("g"));
        assert_eq!(read("data/old"), None);
        assert_eq!(read("data/new").as_deref(), Some("new"));
        assert_eq!(read("gone"), None);
        assert_eq!(read("link/passwd"), None);
        let names = |p: &str| {
            t.read_dir(Path::new(p))
                .unwrap()
                .into_iter()
                .map(|(n, _)| n.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(""), vec!["data", "etc", "link"]);
        assert_eq!(names("etc"), vec!["group", "passwd"]);
        assert_eq!(names("data"), vec!["new"]);

        assert_eq!(
            t.resolve(Path::new("link/passwd"), true).unwrap(),
            PathBuf::from("etc/passwd")
        );
        assert_eq!(
            t.resolve(Path::new("link"), false).unwrap(),
            PathBuf::from("link")
        );
        assert_eq!(
            read(
                t.resolve(Path::new("link/passwd"), true)
                    .unwrap()
                    .to_str()
                    .unwrap()
            )
            .as_deref(),
            Some("root2")
        );
    }

    #[test]
    fn resolve_stays_in_root() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        symlink("/../../etc", d.join("abs")).unwrap();
        symlink("../../../x", d.join("rel")).unwrap();
        symlink("loop", d.join("loop")).unwrap();
        std::fs::create_dir(d.join("usr")).unwrap();
        symlink("usr", d.join("bin")).unwrap();
        let t = Tree::plain(d);
        assert_eq!(
            t.resolve(Path::new("abs/passwd"), true).unwrap(),
            PathBuf::from("etc/passwd")
        );
        assert_eq!(
            t.resolve(Path::new("rel"), true).unwrap(),
            PathBuf::from("x")
        );
        assert_eq!(
            t.resolve(Path::new("bin/app"), false).unwrap(),
            PathBuf::from("usr/app")
        );
        assert!(t.resolve(Path::new("loop"), true).is_err());
    }
}
