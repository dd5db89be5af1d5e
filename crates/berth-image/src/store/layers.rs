//! Layers in the store: staging a tar stream into tmp/ (blob + extracted
//! tree, digests checked), publishing staged layers, short links for
//! overlay mount options, and garbage collection.
//!
//! On disk, for a layer with diff_id sha256:HEX:
//! - `blobs/sha256/HEX`: the uncompressed layer tar (what `save` exports);
//! - `layers/HEX/diff/`: the tree in overlay form (a lowerdir);
//! - `layers/HEX/layer.json`: its LayerRecord; `layers/HEX/link`: its short name;
//! - `l/SHORT -> ../layers/HEX/diff`: the path handed to overlayfs.
//!
//! Publishing renames the blob first and the layer directory second;
//! deleting goes the other way. So a `layers/HEX` directory always has its
//! blob, and it only exists complete (it is built in tmp/ and renamed).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::fsutil::{
    fsync_dir, read_json, remove_tree, rename_new, sync_fs, tree_size, write_atomic,
};
use super::{ImageStore, LayerRecord};
use crate::archive::{decompress, HashReader, Tee};
use crate::error::{ImageError, IoContext};
use crate::layer::apply_layer;

/// A layer built in tmp/, ready to be renamed into the store.
pub(super) struct StagedLayer {
    pub(super) record: LayerRecord,
    blob: PathBuf,
    dir: PathBuf,
}

/// What an archive says about a layer, checked while it streams.
#[derive(Default)]
pub(super) struct Expect<'a> {
    pub(super) diff_id: Option<&'a str>,
    pub(super) digest: Option<&'a str>,
    pub(super) size: Option<u64>,
}

static STAGE_SEQ: AtomicU64 = AtomicU64::new(0);

pub(super) fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

impl ImageStore {
    pub(super) fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex_of(digest))
    }

    pub(super) fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.root.join("layers").join(hex_of(diff_id))
    }

    pub(super) fn has_layer(&self, diff_id: &str) -> bool {
        self.layer_dir(diff_id).join("layer.json").is_file()
    }

    pub(super) fn layer_record(&self, diff_id: &str) -> Result<LayerRecord, ImageError> {
        if !self.has_layer(diff_id) {
            return Err(ImageError::MissingLayer(diff_id.to_string()));
        }
        read_json(&self.layer_dir(diff_id).join("layer.json"))
    }

    /// Streams a (possibly compressed) layer tar into `work`: the
    /// uncompressed tar becomes the blob, and it is extracted at the same
    /// time, so the layer is read once. Digests are checked at the end.
    pub(super) fn stage_layer(
        &self,
        work: &Path,
        raw: &mut dyn Read,
        expect: Expect<'_>,
    ) -> Result<StagedLayer, ImageError> {
        let n = STAGE_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = work.join(format!("layer-{n}"));
        let blob_path = work.join(format!("blob-{n}"));
        fs::create_dir(&dir).at(&dir)?;
        let mut blob = BufWriter::new(File::create(&blob_path).at(&blob_path)?);

        let mut raw = HashReader::new(raw);
        let (_, stream) = decompress(&mut raw).map_err(|e| ImageError::bad_layer("", e))?;
        let mut tar = HashReader::new(Tee {
            inner: stream,
            sink: &mut blob,
        });
        let bytes = apply_layer(&mut tar, &dir.join("diff"))?;
        tar.drain().map_err(|e| ImageError::bad_layer("", e))?;
        let (diff_id, _) = tar.finish();
        raw.drain().map_err(|e| ImageError::bad_layer("", e))?;
        let (digest, size) = raw.finish();
        blob.flush().at(&blob_path)?;
        blob.get_ref().sync_all().at(&blob_path)?;

        let mismatch = |what: &str, got: &str, want: &str| {
            ImageError::bad_layer("", format!("{what} is {got}, the manifest says {want}"))
        };
        if let Some(want) = expect.diff_id.filter(|w| *w != diff_id) {
            return Err(mismatch("diff_id", &diff_id, want));
        }
        if let Some(want) = expect.digest.filter(|w| *w != digest) {
            return Err(mismatch("digest", &digest, want));
        }
        if let Some(want) = expect.size.filter(|w| *w != size) {
            return Err(mismatch("size", &size.to_string(), &want.to_string()));
        }
        self.finish_stage(dir, blob_path, diff_id, bytes)
    }

    /// Stages an uncompressed tar already written to `work` with a known
    /// diff_id (add_layer_from_dir): extracts it and takes it as the blob.
    pub(super) fn stage_tar_file(
        &self,
        work: &Path,
        tar: PathBuf,
        diff_id: String,
    ) -> Result<StagedLayer, ImageError> {
        let n = STAGE_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = work.join(format!("layer-{n}"));
        fs::create_dir(&dir).at(&dir)?;
        let file = File::open(&tar).at(&tar)?;
        let bytes = apply_layer(BufReader::new(file), &dir.join("diff"))?;
        self.finish_stage(dir, tar, diff_id, bytes)
    }

    fn finish_stage(
        &self,
        dir: PathBuf,
        blob: PathBuf,
        diff_id: String,
        size: u64,
    ) -> Result<StagedLayer, ImageError> {
        let record = LayerRecord { diff_id, size };
        let json = serde_json::to_vec(&record).map_err(|e| ImageError::io(&dir, e.into()))?;
        let meta = dir.join("layer.json");
        fs::write(&meta, json).at(&meta)?;
        Ok(StagedLayer { record, blob, dir })
    }

    /// Publishes staged layers. Caller holds the store lock.
    pub(super) fn commit_layers(&self, staged: Vec<StagedLayer>) -> Result<(), ImageError> {
        if staged.is_empty() {
            return Ok(());
        }
        sync_fs(&self.root)?;
        for layer in staged {
            let diff_id = &layer.record.diff_id;
            let dest = self.layer_dir(diff_id);
            if dest.exists() {
                continue;
            }
            rename_new(&layer.blob, &self.blob_path(diff_id))?;
            let short = self.pick_short_name(diff_id)?;
            let link_file = layer.dir.join("link");
            fs::write(&link_file, &short).at(&link_file)?;
            File::open(&link_file)
                .at(&link_file)?
                .sync_all()
                .at(&link_file)?;
            fs::rename(&layer.dir, &dest).at(&dest)?;
            self.ensure_link(&short, diff_id)?;
        }
        for dir in ["blobs/sha256", "layers", "l"] {
            fsync_dir(&self.root.join(dir))?;
        }
        Ok(())
    }

    /// Short names keep overlay mount options small: the shortest prefix
    /// of the diff_id (12 hex digits at least) not taken by another layer.
    fn pick_short_name(&self, diff_id: &str) -> Result<String, ImageError> {
        let hex = hex_of(diff_id);
        let want = link_target(hex);
        for len in (12..=hex.len()).step_by(4) {
            let name = &hex[..len];
            match fs::read_link(self.root.join("l").join(name)) {
                Err(_) => return Ok(name.to_string()),
                Ok(t) if t == want => return Ok(name.to_string()),
                Ok(_) => {}
            }
        }
        Ok(hex.to_string())
    }

    /// Creates (or repairs) `l/SHORT -> ../layers/HEX/diff`.
    pub(super) fn ensure_link(&self, short: &str, diff_id: &str) -> Result<PathBuf, ImageError> {
        let link = self.root.join("l").join(short);
        let want = link_target(hex_of(diff_id));
        if fs::read_link(&link).is_ok_and(|t| t == want) {
            return Ok(link);
        }
        // Atomic replace: build the symlink under a temporary name.
        let tmp = self.root.join("tmp").join(format!(
            "link-{}",
            STAGE_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&want, &tmp).at(&tmp)?;
        fs::rename(&tmp, &link).at(&link)?;
        Ok(link)
    }

    pub(super) fn short_name(&self, diff_id: &str) -> Result<String, ImageError> {
        let file = self.layer_dir(diff_id).join("link");
        let name = fs::read_to_string(&file).at(&file)?;
        let name = name.trim();
        if name.is_empty() || name.contains('/') {
            return Err(ImageError::BadConfig {
                what: file.display().to_string(),
                reason: "bad short link name".into(),
            });
        }
        Ok(name.to_string())
    }

    /// Deletes every layer not in `referenced` (diff_ids), blobs that are
    /// neither a layer nor an image config, and dangling short links.
    /// Returns (layers deleted, bytes reclaimed). Caller holds the lock.
    pub(super) fn gc_locked(
        &self,
        referenced: &HashSet<String>,
        configs: &HashSet<String>,
    ) -> Result<(usize, u64), ImageError> {
        let tmp = self.root.join("tmp");
        let (mut layers, mut bytes) = (0usize, 0u64);
        let layers_dir = self.root.join("layers");
        for entry in fs::read_dir(&layers_dir).at(&layers_dir)? {
            let entry = entry.at(&layers_dir)?;
            let hex = entry.file_name().to_string_lossy().into_owned();
            let diff_id = format!("sha256:{hex}");
            if referenced.contains(&diff_id) {
                continue;
            }
            let dir = entry.path();
            bytes += tree_size(&dir.join("diff"));
            if let Ok(short) = self.short_name(&diff_id) {
                let link = self.root.join("l").join(short);
                if fs::read_link(&link).is_ok_and(|t| t == link_target(&hex)) {
                    fs::remove_file(&link).at(&link)?;
                }
            }
            remove_tree(&tmp, &dir)?;
            let blob = self.blob_path(&diff_id);
            if let Ok(m) = fs::metadata(&blob) {
                bytes += m.len();
                fs::remove_file(&blob).at(&blob)?;
            }
            layers += 1;
        }
        // Blobs left behind by a crash between publishing steps.
        let blobs = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs).at(&blobs)? {
            let entry = entry.at(&blobs)?;
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            if !self.has_layer(&digest) && !configs.contains(&digest) {
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(entry.path()).at(&entry.path())?;
            }
        }
        let links = self.root.join("l");
        for entry in fs::read_dir(&links).at(&links)? {
            let entry = entry.at(&links)?;
            if !entry.path().exists() {
                fs::remove_file(entry.path()).at(&entry.path())?;
            }
        }
        for dir in ["blobs/sha256", "layers", "l"] {
            fsync_dir(&self.root.join(dir))?;
        }
        Ok((layers, bytes))
    }

    pub(super) fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
        write_atomic(&self.root.join("tmp"), path, bytes)
    }
}

fn link_target(hex: &str) -> PathBuf {
    PathBuf::from(format!("../layers/{hex}/diff"))
}
