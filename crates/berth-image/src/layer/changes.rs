//! Docker's `diff`: what a container's upperdir changed against its image.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{is_opaque, is_whiteout, lstat, OPAQUE_MARKER, WHITEOUT_META_PREFIX, WHITEOUT_PREFIX};
use crate::error::{ImageError, IoContext};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ChangeKind {
    Added,
    Changed,
    Deleted,
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Added => "A",
            Self::Changed => "C",
            Self::Deleted => "D",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// Absolute path inside the container, e.g. "/etc/hosts".
    pub path: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.path)
    }
}

/// Walks an overlay upperdir and reports what it changes against `lowers`
/// (bottom first, as `ImageStore::layer_paths` returns them):
/// a whiteout (char device 0/0, or an OCI `.wh.NAME` file) is `D`; a path
/// visible in no lower is `A`; anything else is `C`. Directories holding a
/// change appear as `C` because overlayfs copies them up, which is what
/// Docker shows too. Below an opaque directory the lowers are hidden, so
/// its entries are `A` and the lower entries it hides are `D`.
/// The result is sorted by path.
pub fn changes(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>, ImageError> {
    let mut out = Vec::new();
    walk(upper, Path::new(""), lowers, false, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup();
    Ok(out)
}

fn walk(
    upper: &Path,
    rel: &Path,
    lowers: &[PathBuf],
    hidden: bool,
    out: &mut Vec<Change>,
) -> Result<(), ImageError> {
    let dir = upper.join(rel);
    let mut names: Vec<OsString> = std::fs::read_dir(&dir)
        .at(&dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .at(&dir)?;
    names.sort();
    for name in names {
        let bytes = name.as_bytes();
        let child_rel = rel.join(&name);
        if bytes.starts_with(WHITEOUT_PREFIX) {
            if bytes != OPAQUE_MARKER && !bytes.starts_with(WHITEOUT_META_PREFIX) {
                let target = std::ffi::OsStr::from_bytes(&bytes[WHITEOUT_PREFIX.len()..]);
                out.push(change(ChangeKind::Deleted, &rel.join(target)));
            }
            continue;
        }
        let path = upper.join(&child_rel);
        let Some(meta) = lstat(&path)? else { continue };
        if is_whiteout(&meta) {
            out.push(change(ChangeKind::Deleted, &child_rel));
            continue;
        }
        let in_lower = !hidden && visible_in_lowers(&child_rel, lowers)?;
        let kind = if in_lower {
            ChangeKind::Changed
        } else {
            ChangeKind::Added
        };
        out.push(change(kind, &child_rel));
        if meta.is_dir() {
            let opaque = is_opaque(&path);
            if opaque && in_lower {
                report_hidden(upper, &child_rel, lowers, out)?;
            }
            walk(upper, &child_rel, lowers, hidden || opaque, out)?;
        }
    }
    Ok(())
}

/// For an opaque upper directory: every entry the lowers had there and the
/// upper does not re-create is gone from the container's view.
fn report_hidden(
    upper: &Path,
    rel: &Path,
    lowers: &[PathBuf],
    out: &mut Vec<Change>,
) -> Result<(), ImageError> {
    let mut names = BTreeSet::new();
    for lower in lowers {
        let dir = lower.join(rel);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd {
            names.insert(e.at(&dir)?.file_name());
        }
    }
    for name in names {
        let child = rel.join(&name);
        if lstat(&upper.join(&child))?.is_none() && visible_in_lowers(&child, lowers)? {
            out.push(change(ChangeKind::Deleted, &child));
        }
    }
    Ok(())
}

/// Whether `rel` exists in the merged view of `lowers` (bottom first):
/// searched from the top, stopping at a whiteout of the path or of an
/// ancestor, and not looking below a layer where an ancestor is opaque.
fn visible_in_lowers(rel: &Path, lowers: &[PathBuf]) -> Result<bool, ImageError> {
    let comps: Vec<_> = rel.components().collect();
    for lower in lowers.iter().rev() {
        let mut cur = lower.clone();
        let mut opaque_above = false;
        for (i, comp) in comps.iter().enumerate() {
            cur.push(comp);
            match lstat(&cur)? {
                None => break,
                Some(m) if is_whiteout(&m) => return Ok(false),
                Some(_) if i + 1 == comps.len() => return Ok(true),
                Some(m) if m.is_dir() => opaque_above |= is_opaque(&cur),
                // A file where a directory is needed hides everything below.
                Some(_) => return Ok(false),
            }
        }
        if opaque_above {
            return Ok(false);
        }
    }
    Ok(false)
}

fn change(kind: ChangeKind, rel: &Path) -> Change {
    Change {
        kind,
        path: format!("/{}", rel.to_string_lossy()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::OPAQUE_XATTR;
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    use std::fs;

    fn whiteout(path: &Path) {
        mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).unwrap();
    }

    #[test]
    fn lists_docker_style_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let (l1, l2, up) = (
            tmp.path().join("l1"),
            tmp.path().join("l2"),
            tmp.path().join("up"),
        );
        for d in ["etc", "var/log", "opt/old", "tmp"] {
            fs::create_dir_all(l1.join(d)).unwrap();
        }
        fs::write(l1.join("etc/hosts"), "a").unwrap();
        fs::write(l1.join("etc/passwd"), "a").unwrap();
        fs::write(l1.join("opt/old/f"), "a").unwrap();
        fs::write(l1.join("tmp/x"), "a").unwrap();
        // l2 deletes /tmp/x: the upper re-creating it is an addition.
        fs::create_dir_all(l2.join("tmp")).unwrap();
        whiteout(&l2.join("tmp/x"));

        for d in ["etc", "var/log", "new/dir", "opt", "tmp"] {
            fs::create_dir_all(up.join(d)).unwrap();
        }
        fs::write(up.join("etc/hosts"), "b").unwrap();
        whiteout(&up.join("etc/passwd"));
        fs::write(up.join("var/log/app.log"), "x").unwrap();
        fs::write(up.join("new/dir/f"), "x").unwrap();
        fs::write(up.join("tmp/x"), "x").unwrap();
        fs::write(up.join("opt/.wh.gone"), "").unwrap();
        fs::create_dir(up.join("opt/old")).unwrap();
        xattr::set(up.join("opt/old"), OPAQUE_XATTR, b"y").unwrap();
        fs::write(up.join("opt/old/g"), "x").unwrap();

        let got: Vec<String> = changes(&up, &[l1, l2])
            .unwrap()
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            got,
            [
                "C /etc",
                "C /etc/hosts",
                "D /etc/passwd",
                "A /new",
                "A /new/dir",
                "A /new/dir/f",
                "C /opt",
                "D /opt/gone",
                "C /opt/old",
                "D /opt/old/f",
                "A /opt/old/g",
                "C /tmp",
                "A /tmp/x",
                "C /var",
                "C /var/log",
                "A /var/log/app.log",
            ]
        );
    }
}
