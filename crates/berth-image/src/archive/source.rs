//! Import sources seen as a small file system: a first pass over a tar
//! (entry list plus the content of small JSON files), or a directory.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{ImageError, IoContext};

/// Largest config, manifest or index read into memory.
pub(crate) const MAX_SMALL: u64 = 16 << 20;
/// All small files of one archive together.
const SMALL_BUDGET: u64 = 64 << 20;
/// Top-level files that mark an image archive.
const META_FILES: [&str; 4] = ["manifest.json", "index.json", "oci-layout", "repositories"];

/// What the manifest parser needs from an import source.
pub(crate) trait MetaSource {
    /// The file or directory being imported, for error messages.
    fn label(&self) -> &Path;
    fn has(&self, path: &str) -> bool;
    /// Follows symlinks and hard links to the regular file a path names.
    fn resolve(&self, path: &str) -> Result<String, ImageError>;
    /// The content of a small file (after `resolve`).
    fn read_small(&self, path: &str) -> Result<Vec<u8>, ImageError>;
}

/// Normalizes an archive path: no leading `/` or `./`, no `.`, `..`
/// resolved; None when it climbs above the archive root.
pub(crate) fn norm(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

pub(crate) fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether a path can belong to a `docker save` archive or an OCI layout;
/// the first entry that cannot tells us the tar is a root file system.
fn archive_like(p: &str) -> bool {
    if p.is_empty() || META_FILES.contains(&p) || p == "blobs" || p.starts_with("blobs/") {
        return true;
    }
    let (first, rest) = p.split_once('/').unwrap_or((p, ""));
    let id = first.strip_suffix(".json").unwrap_or(first);
    is_hex64(id) && matches!(rest, "" | "layer.tar" | "json" | "VERSION")
}

#[derive(Debug, Clone)]
enum Kind {
    File,
    /// A symlink or hard link, with its target as an archive path.
    Link(String),
    Other,
}

/// The result of the first pass over a tar.
pub(crate) struct TarScan {
    label: PathBuf,
    entries: HashMap<String, Kind>,
    small: HashMap<String, Vec<u8>>,
    /// manifest.json or index.json was found and nothing looked like a
    /// root file system.
    pub(crate) image_like: bool,
}

impl TarScan {
    /// Reads entry headers (and small JSON files) until the archive ends or
    /// an entry shows it is a root file system rather than an image archive.
    pub(crate) fn scan<R: Read>(
        label: &Path,
        entries: tar::Entries<'_, R>,
    ) -> Result<Self, ImageError> {
        let bad = |what: &str, reason: &dyn std::fmt::Display| {
            ImageError::bad_archive(label, what, reason)
        };
        let mut scan = TarScan {
            label: label.to_path_buf(),
            entries: HashMap::new(),
            small: HashMap::new(),
            image_like: false,
        };
        let mut budget = SMALL_BUDGET;
        let mut last = String::new();
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(&super::entry_after(&last), &e))?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(path) = norm(&raw).filter(|p| archive_like(p)) else {
                return Ok(scan);
            };
            last = raw;
            let header = entry.header();
            let kind = match header.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
                t @ (tar::EntryType::Symlink | tar::EntryType::Link) => {
                    let target = entry
                        .link_name_bytes()
                        .map(|b| String::from_utf8_lossy(&b).into_owned());
                    let target = target.unwrap_or_default();
                    // Symlinks are relative to their directory, hard links
                    // to the archive root.
                    let joined = match (t, path.rsplit_once('/')) {
                        (tar::EntryType::Symlink, Some((dir, _))) if !target.starts_with('/') => {
                            format!("{dir}/{target}")
                        }
                        _ => target.clone(),
                    };
                    let resolved = norm(&joined).ok_or_else(|| {
                        bad(&path, &format!("link target {target} escapes the archive"))
                    })?;
                    Kind::Link(resolved)
                }
                tar::EntryType::Directory => continue,
                _ => Kind::Other,
            };
            let size = entry.header().size().unwrap_or(u64::MAX);
            let wanted = matches!(kind, Kind::File)
                && size <= MAX_SMALL
                && (META_FILES.contains(&path.as_str())
                    || path.ends_with(".json")
                    || path.starts_with("blobs/"));
            if wanted {
                let mut first = [0u8; 1];
                let n = entry.read(&mut first).map_err(|e| bad(&path, &e))?;
                // Blobs are configs, manifests or layers; only the JSON ones
                // (which start with '{') are worth keeping in memory.
                if n == 1 && (first[0] == b'{' || !path.starts_with("blobs/")) {
                    if size > budget {
                        return Err(bad(&path, &"archive metadata exceeds 64 MiB"));
                    }
                    budget -= size;
                    let mut content = Vec::with_capacity(size as usize);
                    content.push(first[0]);
                    entry
                        .read_to_end(&mut content)
                        .map_err(|e| bad(&path, &e))?;
                    scan.small.insert(path.clone(), content);
                } else if n == 0 {
                    scan.small.insert(path.clone(), Vec::new());
                }
            }
            scan.entries.insert(path, kind);
        }
        scan.image_like = scan.has("manifest.json") || scan.has("index.json");
        // Every entry looked like an archive but no manifest names the
        // images: docker < 1.10 wrote only `repositories` and v1 json.
        if !scan.image_like && scan.has("repositories") {
            return Err(bad(
                "manifest.json",
                &"missing: archives from docker before 1.10 are not supported",
            ));
        }
        Ok(scan)
    }
}

impl MetaSource for TarScan {
    fn label(&self) -> &Path {
        &self.label
    }

    fn has(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }

    fn resolve(&self, path: &str) -> Result<String, ImageError> {
        let mut cur = norm(path).ok_or_else(|| {
            ImageError::bad_archive(&self.label, path, "path escapes the archive")
        })?;
        for _ in 0..16 {
            match self.entries.get(&cur) {
                Some(Kind::File) => return Ok(cur),
                Some(Kind::Link(target)) => cur = target.clone(),
                Some(Kind::Other) => {
                    return Err(ImageError::bad_archive(
                        &self.label,
                        path,
                        "not a regular file",
                    ))
                }
                None => {
                    return Err(ImageError::bad_archive(
                        &self.label,
                        path,
                        "missing from the archive",
                    ))
                }
            }
        }
        Err(ImageError::bad_archive(
            &self.label,
            path,
            "too many levels of links",
        ))
    }

    fn read_small(&self, path: &str) -> Result<Vec<u8>, ImageError> {
        let real = self.resolve(path)?;
        self.small.get(&real).cloned().ok_or_else(|| {
            ImageError::bad_archive(&self.label, path, "not a JSON file of at most 16 MiB")
        })
    }
}

/// An OCI layout or an unpacked `docker save` in a directory.
pub(crate) struct DirSource {
    root: PathBuf,
}

impl DirSource {
    pub(crate) fn new(root: &Path) -> Result<Self, ImageError> {
        let root = root.canonicalize().at(root)?;
        Ok(Self { root })
    }

    pub(crate) fn is_image_dir(&self) -> bool {
        self.has("manifest.json") || self.has("index.json")
    }

    /// Path on disk of a resolved entry.
    pub(crate) fn file(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }
}

impl MetaSource for DirSource {
    fn label(&self) -> &Path {
        &self.root
    }

    fn has(&self, path: &str) -> bool {
        norm(path).is_some_and(|p| self.root.join(p).is_file())
    }

    fn resolve(&self, path: &str) -> Result<String, ImageError> {
        let bad = |reason: &str| ImageError::bad_archive(&self.root, path, reason);
        let rel = norm(path).ok_or_else(|| bad("path escapes the directory"))?;
        let full = self.root.join(&rel);
        let real = full
            .canonicalize()
            .map_err(|e| bad(&format!("cannot open: {e}")))?;
        // A symlink may point anywhere on the host; only follow it inside
        // the layout so an import cannot read unrelated files.
        let inside = real
            .strip_prefix(&self.root)
            .map_err(|_| bad("link points outside the directory"))?;
        if !real.is_file() {
            return Err(bad("not a regular file"));
        }
        Ok(inside.to_string_lossy().into_owned())
    }

    fn read_small(&self, path: &str) -> Result<Vec<u8>, ImageError> {
        let real = self.file(&self.resolve(path)?);
        let len = std::fs::metadata(&real).at(&real)?.len();
        if len > MAX_SMALL {
            return Err(ImageError::bad_archive(
                &self.root,
                path,
                "larger than 16 MiB",
            ));
        }
        std::fs::read(&real).at(&real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_table() {
        for (input, want) in [
            ("./manifest.json", Some("manifest.json")),
            ("/a//b/./c", Some("a/b/c")),
            ("a/../b", Some("b")),
            ("../x", None),
            ("", Some("")),
        ] {
            assert_eq!(norm(input).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn archive_like_table() {
        let id = "a".repeat(64);
        for (input, want) in [
            ("manifest.json".to_string(), true),
            ("blobs/sha256/00".to_string(), true),
            (format!("{id}.json"), true),
            (format!("{id}/layer.tar"), true),
            (format!("{id}/etc"), false),
            ("etc/passwd".to_string(), false),
            ("bin".to_string(), false),
        ] {
            assert_eq!(archive_like(&input), want, "{input}");
        }
    }
}
