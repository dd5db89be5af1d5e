//! Image archives: recognising what an import path holds, reading its
//! manifests, streaming its layers, and writing `docker save` archives.
//!
//! Recognised by content, never by file name:
//! - a tar (plain, gzip or zstd) of a root file system: one layer;
//! - a tar of `docker save` output, legacy (manifest.json) or OCI
//!   (index.json + oci-layout + blobs, as docker 25+ writes);
//! - an OCI image layout, as a directory or a tar.
//!
//! A tar is read twice: the first pass lists entries and keeps small JSON
//! files (stopping at the first entry that belongs to a root file system),
//! the second streams the layers the manifests name. Neither pass needs the
//! archive to be seekable or its entries to be in any order.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use crate::error::{ImageError, IoContext};

mod compress;
mod manifest;

pub(crate) use manifest::host_manifest;
mod save;
mod source;

pub(crate) use compress::{decompress, sha256_digest, HashReader, HashWriter, Tee};
pub(crate) use manifest::{plan, valid_digest, ImagePlan, LayerPlan};
pub(crate) use save::{write_archive, SaveItem};
pub(crate) use source::{is_hex64, DirSource, TarScan};

/// What an import path holds.
pub(crate) enum Source {
    /// A tar of a root file system, to import as one layer.
    Rootfs,
    /// A tar holding `docker save` output or an OCI layout.
    TarImages(TarScan),
    /// A directory holding an OCI layout or an unpacked `docker save`.
    DirImages(DirSource),
}

/// Looks at an import path and says what it holds.
pub(crate) fn detect(path: &Path) -> Result<Source, ImageError> {
    let meta = std::fs::metadata(path).at(path)?;
    if meta.is_dir() {
        let dir = DirSource::new(path)?;
        if !dir.is_image_dir() {
            return Err(ImageError::bad_archive(
                path,
                "index.json",
                "directory is neither an OCI image layout nor a docker save directory",
            ));
        }
        return Ok(Source::DirImages(dir));
    }
    if meta.len() == 0 {
        return Err(ImageError::bad_archive(path, "content", "empty file"));
    }
    let scan = with_entries(path, |entries| TarScan::scan(path, entries))?;
    Ok(if scan.image_like {
        Source::TarImages(scan)
    } else {
        Source::Rootfs
    })
}

/// The decompressed tar stream of a file.
pub(crate) fn open_stream(path: &Path) -> Result<Box<dyn Read>, ImageError> {
    let file = File::open(path).at(path)?;
    let (_, stream) = decompress(BufReader::new(file))
        .map_err(|e| ImageError::bad_archive(path, "compression", e))?;
    Ok(stream)
}

/// Calls `f` with the entries of the tar file at `path`, seeking over
/// content when the file is not compressed.
fn with_entries<T>(
    path: &Path,
    f: impl FnOnce(tar::Entries<'_, Box<dyn ReadSeek>>) -> Result<T, ImageError>,
) -> Result<T, ImageError> {
    let mut file = File::open(path).at(path)?;
    let mut head = [0u8; 6];
    let n = file.read(&mut head).at(path)?;
    let kind =
        compress::sniff(&head[..n]).map_err(|e| ImageError::bad_archive(path, "compression", e))?;
    file.rewind().at(path)?;
    let reader: Box<dyn ReadSeek> = if kind == compress::Compression::None {
        Box::new(BufReader::new(file))
    } else {
        let (_, stream) = decompress(BufReader::new(file))
            .map_err(|e| ImageError::bad_archive(path, "compression", e))?;
        Box::new(NoSeek {
            inner: stream,
            pos: 0,
        })
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries_with_seek()
        .map_err(|e| ImageError::bad_archive(path, "compression", e))?;
    f(entries)
}

pub(crate) trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// A decompressed stream behind the `Seek` the tar reader wants: forward
/// seeks read and discard, and the position is counted so the reader's
/// offset bookkeeping stays right.
struct NoSeek {
    inner: Box<dyn Read>,
    pos: u64,
}

impl Read for NoSeek {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for NoSeek {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        match pos {
            std::io::SeekFrom::Current(n) if n >= 0 => {
                let skipped =
                    std::io::copy(&mut (&mut self.inner).take(n as u64), &mut std::io::sink())?;
                self.pos += skipped;
                if skipped < n as u64 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "unexpected end of archive",
                    ));
                }
                Ok(self.pos)
            }
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "a compressed stream can only seek forward",
            )),
        }
    }
}

/// Second pass over a tar: calls `f` for every regular entry whose
/// normalized path is in `wanted`.
pub(crate) fn for_each_wanted(
    path: &Path,
    wanted: &HashSet<String>,
    mut f: impl FnMut(&str, &mut dyn Read) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    with_entries(path, |entries| {
        let mut last = String::new();
        for entry in entries {
            let mut entry =
                entry.map_err(|e| ImageError::bad_archive(path, entry_after(&last), e))?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let is_file = matches!(
                entry.header().entry_type(),
                tar::EntryType::Regular | tar::EntryType::Continuous
            );
            if let Some(name) = source::norm(&raw).filter(|n| is_file && wanted.contains(n)) {
                f(&name, &mut entry)?;
            }
            last = raw;
        }
        Ok(())
    })
}

/// Names the tar entry an iteration error is about: the one after the last
/// good entry.
pub(crate) fn entry_after(last: &str) -> String {
    if last.is_empty() {
        "first entry".to_string()
    } else {
        format!("entry after {last}")
    }
}

/// JSON with object keys sorted at every level, whatever map type the
/// serialized value used, so equal values give equal bytes (and digests).
pub(crate) fn canonical_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ImageError> {
    fn sort(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sort).collect())
            }
            other => other,
        }
    }
    let err = |e: serde_json::Error| ImageError::BadConfig {
        what: "json".into(),
        reason: e.to_string(),
    };
    let value = serde_json::to_value(value).map_err(err)?;
    serde_json::to_vec(&sort(value)).map_err(err)
}

/// Runs archive detection and manifest parsing on in-memory bytes, for the
/// cargo-fuzz target: it must never panic, whatever the input. Output is
/// capped at 64 MiB so a decompression bomb cannot exhaust memory.
pub fn parse_archive_for_fuzz(bytes: &[u8]) {
    let Ok((_, stream)) = decompress(bytes) else {
        return;
    };
    let mut archive = tar::Archive::new(stream.take(64 << 20));
    let Ok(entries) = archive.entries() else {
        return;
    };
    let Ok(scan) = TarScan::scan(Path::new("<fuzz>"), entries) else {
        return;
    };
    if scan.image_like {
        let _ = plan(&scan);
    }
}
