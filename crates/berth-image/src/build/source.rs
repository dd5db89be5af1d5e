//! Where COPY and ADD read from: the build context (filtered by
//! `.dockerignore`) or the file tree of an earlier stage or image. Resolves
//! source patterns, lists what each source copies, and hashes that for the
//! build cache.

use std::fs::Metadata;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use globset::GlobBuilder;
use sha2::{Digest, Sha256};

use super::tree::{Found, Tree};
use crate::dockerignore::Ignore;

pub(crate) struct Source<'a> {
    pub tree: Tree,
    /// Only for the build context.
    pub ignore: Option<&'a Ignore>,
    /// Whether copied files keep their owner (stages and images) or become
    /// root's (the build context), unless --chown says otherwise.
    pub preserve_owner: bool,
}

/// One source argument after pattern matching: its path as matched (for
/// the destination's base name) and the entry it resolves to.
#[derive(Debug)]
pub(crate) struct Matched {
    pub given: PathBuf,
    pub resolved: PathBuf,
    pub found: Found,
}

/// One file, directory or symlink to copy, relative to the source top.
#[derive(Debug)]
pub(crate) struct Entry {
    pub rel: PathBuf,
    pub real: PathBuf,
    pub meta: Metadata,
}

fn has_glob_meta(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Lexically cleans a source path relative to the tree root; None when
/// `..` climbs above the root.
pub(crate) fn clean_rel(p: &str) -> Option<PathBuf> {
    let mut out: Vec<&std::ffi::OsStr> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop()?;
            }
            _ => {}
        }
    }
    Some(out.iter().collect())
}

impl Source<'_> {
    fn ignored(&self, rel: &Path, is_dir: bool) -> bool {
        self.ignore.is_some_and(|i| i.is_ignored(rel, is_dir))
    }

    /// Expands one source argument. Errors name the argument.
    pub fn matches(&self, arg: &str) -> Result<Vec<Matched>, String> {
        let Some(rel) = clean_rel(arg) else {
            return Err(format!("source path {arg:?} is outside the build context"));
        };
        let io = |e: io::Error| format!("reading source {arg:?}: {e}");
        let mut candidates: Vec<PathBuf> = vec![PathBuf::new()];
        if has_glob_meta(arg) {
            for comp in rel.components() {
                let comp = comp.as_os_str();
                let text = comp.to_string_lossy();
                let mut next = Vec::new();
                if has_glob_meta(&text) {
                    let glob = GlobBuilder::new(&text)
                        .literal_separator(true)
                        .backslash_escape(true)
                        .build()
                        .map_err(|e| format!("bad source pattern {arg:?}: {}", e.kind()))?
                        .compile_matcher();
                    for cand in &candidates {
                        let dir = self.tree.resolve(cand, true).map_err(io)?;
                        let is_dir = self
                            .tree
                            .lookup(&dir)
                            .map_err(io)?
                            .is_some_and(|f| f.meta.is_dir());
                        if !is_dir {
                            continue;
                        }
                        for (name, _) in self.tree.read_dir(&dir).map_err(io)? {
                            if glob.is_match(Path::new(&name)) {
                                next.push(cand.join(&name));
                            }
                        }
                    }
                } else {
                    next = candidates.iter().map(|c| c.join(comp)).collect();
                }
                candidates = next;
            }
        } else {
            candidates = vec![rel];
        }
        let mut out = Vec::new();
        for given in candidates {
            let resolved = self.tree.resolve(&given, true).map_err(io)?;
            let Some(found) = self.tree.lookup(&resolved).map_err(io)? else {
                continue;
            };
            let is_dir = found.meta.is_dir();
            let hidden = self.ignored(&resolved, is_dir)
                && !(is_dir && self.ignore.is_some_and(Ignore::has_exceptions));
            if hidden {
                continue;
            }
            out.push(Matched {
                given,
                resolved,
                found,
            });
        }
        if out.is_empty() {
            return Err(if has_glob_meta(arg) {
                format!("no source files match {arg:?}")
            } else if self.ignore.is_some() {
                format!("{arg:?} not found in the build context or excluded by .dockerignore")
            } else {
                format!("{arg:?} not found")
            });
        }
        Ok(out)
    }

    /// What copying `m` writes: for a directory its contents (not itself),
    /// depth first, parents before children; for anything else the entry
    /// itself with an empty `rel`.
    pub fn entries(&self, m: &Matched) -> Result<Vec<Entry>, String> {
        if !m.found.meta.is_dir() {
            return Ok(vec![Entry {
                rel: PathBuf::new(),
                real: m.found.real.clone(),
                meta: m.found.meta.clone(),
            }]);
        }
        let mut out = Vec::new();
        self.walk(&m.resolved, Path::new(""), &mut out)
            .map_err(|e| format!("reading source {}: {e}", m.given.display()))?;
        Ok(out)
    }

    /// Appends the entries under `dir` (tree-relative) to `out`, returning
    /// whether anything was appended.
    fn walk(&self, dir: &Path, rel: &Path, out: &mut Vec<Entry>) -> io::Result<bool> {
        let mut any = false;
        for (name, found) in self.tree.read_dir(dir)? {
            let tree_rel = dir.join(&name);
            let rel = rel.join(&name);
            let is_dir = found.meta.is_dir();
            let ignored = self.ignored(&tree_rel, is_dir);
            if is_dir {
                if ignored && !self.ignore.is_some_and(Ignore::has_exceptions) {
                    continue;
                }
                let at = out.len();
                out.push(Entry {
                    rel: rel.clone(),
                    real: found.real,
                    meta: found.meta,
                });
                let children = self.walk(&tree_rel, &rel, out)?;
                if ignored && !children {
                    // An ignored directory appears only to hold re-included
                    // files.
                    out.truncate(at);
                    continue;
                }
                any = true;
            } else if !ignored {
                out.push(Entry {
                    rel,
                    real: found.real,
                    meta: found.meta,
                });
                any = true;
            }
        }
        Ok(any)
    }
}

/// Feeds what determines a copy's result into `h`: paths, types, modes,
/// owners (when kept), sizes, contents and link targets. Not times.
pub(crate) fn hash_entries(
    h: &mut Sha256,
    entries: &[Entry],
    preserve_owner: bool,
) -> io::Result<()> {
    for e in entries {
        h.update(e.rel.as_os_str().as_bytes());
        h.update([0]);
        let ft = e.meta.file_type();
        h.update(format!("{:o}", e.meta.mode()).as_bytes());
        if preserve_owner {
            h.update(format!(":{}:{}", e.meta.uid(), e.meta.gid()).as_bytes());
        }
        h.update([0]);
        if ft.is_symlink() {
            h.update(std::fs::read_link(&e.real)?.as_os_str().as_bytes());
        } else if ft.is_file() {
            let mut f = std::fs::File::open(&e.real)?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut fh = Sha256::new();
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                fh.update(&buf[..n]);
            }
            h.update(fh.finalize());
        }
        h.update([0xff]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for (p, data) in [
            ("a.txt", "a"),
            ("b.txt", "b"),
            ("src/main.rs", "fn main"),
            ("src/lib.rs", "lib"),
            ("src/deep/x.rs", "x"),
            ("logs/1.log", "1"),
            ("logs/keep.log", "k"),
            ("secret", "s"),
        ] {
            let p = d.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
        std::os::unix::fs::symlink("a.txt", d.join("link")).unwrap();
        std::os::unix::fs::symlink("/../../etc/passwd", d.join("escape")).unwrap();
        tmp
    }

    fn names(src: &Source, arg: &str) -> Result<Vec<String>, String> {
        Ok(src
            .matches(arg)?
            .iter()
            .map(|m| m.given.display().to_string())
            .collect())
    }

    #[test]
    fn matching() {
        let tmp = ctx();
        let ignore = Ignore::parse(".dockerignore", "secret\nlogs\n!logs/keep.log").unwrap();
        let src = Source {
            tree: Tree::plain(tmp.path()),
            ignore: Some(&ignore),
            preserve_owner: false,
        };
        assert_eq!(names(&src, "a.txt").unwrap(), vec!["a.txt"]);
        assert_eq!(names(&src, "/a.txt").unwrap(), vec!["a.txt"]);
        assert_eq!(names(&src, "./src/../a.txt").unwrap(), vec!["a.txt"]);
        assert_eq!(names(&src, "*.txt").unwrap(), vec!["a.txt", "b.txt"]);
        assert_eq!(
            names(&src, "src/*.rs").unwrap(),
            vec!["src/lib.rs", "src/main.rs"]
        );
        assert_eq!(names(&src, "*/*.log").unwrap(), vec!["logs/keep.log"]);
        assert_eq!(names(&src, "link").unwrap(), vec!["link"]);
        assert_eq!(
            names(&src, "../x"),
            Err("source path \"../x\" is outside the build context".to_string())
        );
        assert_eq!(
            names(&src, "secret"),
            Err(
                "\"secret\" not found in the build context or excluded by .dockerignore"
                    .to_string()
            )
        );
        assert_eq!(
            names(&src, "*.none"),
            Err("no source files match \"*.none\"".to_string())
        );
        // A symlink pointing outside resolves inside the context (and is
        // then absent), as Docker scopes symlinks to the context.
        assert!(names(&src, "escape").is_err());

        let m = src.matches(".").unwrap();
        let all: Vec<String> = src
            .entries(&m[0])
            .unwrap()
            .iter()
            .map(|e| e.rel.display().to_string())
            .collect();
        assert_eq!(
            all,
            vec![
                "a.txt",
                "b.txt",
                "escape",
                "link",
                "logs",
                "logs/keep.log",
                "src",
                "src/deep",
                "src/deep/x.rs",
                "src/lib.rs",
                "src/main.rs"
            ]
        );
    }

    #[test]
    fn hash_changes_with_content_and_mode() {
        let tmp = ctx();
        let src = Source {
            tree: Tree::plain(tmp.path()),
            ignore: None,
            preserve_owner: false,
        };
        let digest = || {
            let m = src.matches("src").unwrap();
            let mut h = Sha256::new();
            hash_entries(&mut h, &src.entries(&m[0]).unwrap(), false).unwrap();
            hex::encode(h.finalize())
        };
        let first = digest();
        assert_eq!(first, digest());
        std::fs::write(tmp.path().join("src/lib.rs"), "changed").unwrap();
        let second = digest();
        assert_ne!(first, second);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            tmp.path().join("src/lib.rs"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert_ne!(second, digest());
    }
}
