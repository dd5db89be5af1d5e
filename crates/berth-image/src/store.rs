//! The image store: a content-addressed directory of layers and image
//! configs, plus a tag index.
//!
//! Layout under the root:
//! - `blobs/sha256/HEX`: image configs (kept byte for byte: the image id is
//!   their digest) and uncompressed layer tars (keyed by diff_id);
//! - `layers/HEX/`, `l/SHORT`: extracted layers, see `store/layers.rs`;
//! - `images/HEX.json`: which layers (with sizes) an image has;
//! - `repositories.json`: tags, `{"tags": {"name:tag": "sha256:..."}}`;
//! - `tmp/`: staging and deletion area, emptied by `open`;
//! - `lock`: flock held while an ImageStore is open.
//!
//! Writers stage everything in tmp/ and rename it in under a mutex, in an
//! order where a crash leaves only unreferenced leftovers (an image record
//! is written after its layers and config, tags after the record), which
//! `prune` collects.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use berth_types::ImageRef;
use oci_spec::image::{
    Arch, ConfigBuilder, HistoryBuilder, ImageConfiguration, ImageConfigurationBuilder, Os,
    RootFsBuilder,
};
use serde::{Deserialize, Serialize};

use crate::archive::{
    self, canonical_json, sha256_digest, valid_digest, HashWriter, ImagePlan, Source,
};
use crate::error::{ImageError, IoContext};
use crate::layer::write_layer_tar_excluding;

mod fsutil;
mod layers;

use fsutil::{fsync_dir, read_json};
use layers::{hex_of, Expect, StagedLayer};

/// PATH for images imported from a plain root file system, as Docker sets.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct ImageStore {
    root: PathBuf,
    /// Serializes every change to the published state (renames into blobs/,
    /// layers/, images/, and the tag index). Heavy work happens outside it.
    lock: Mutex<()>,
    /// Layers made by add_layer_from_dir that no image references yet (a
    /// build in progress): prune must not take them.
    pending: Mutex<HashSet<String>>,
    /// Held for the store's lifetime: two stores on one root would empty
    /// each other's tmp/ and race on the index.
    _flock: nix::fcntl::Flock<File>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Image {
    /// "sha256:<hex>" digest of the config blob (Docker's image id).
    pub id: String,
    pub tags: Vec<ImageRef>,
    pub config: ImageConfiguration,
    /// Bottom first.
    pub layers: Vec<LayerRecord>,
    /// RFC 3339.
    pub created: Option<String>,
    /// Sum of the layers' sizes.
    pub size: u64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct LayerRecord {
    /// "sha256:<hex>" of the uncompressed tar.
    pub diff_id: String,
    /// Bytes of regular-file content in the layer (what `docker images`
    /// adds up), not the tar's length.
    pub size: u64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct PruneReport {
    pub images_deleted: Vec<String>,
    pub layers_deleted: usize,
    pub bytes_reclaimed: u64,
}

#[derive(Serialize, Deserialize)]
struct ImageRecord {
    layers: Vec<LayerRecord>,
}

#[derive(Serialize, Deserialize, Default)]
struct TagIndex {
    tags: BTreeMap<String, String>,
}

/// A reference resolved to an image, remembering whether it named a tag.
struct Resolved {
    id: String,
    tag: Option<ImageRef>,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`. Whatever a crash
    /// left in tmp/ is deleted. Fails with `Locked` if another ImageStore
    /// has the same root open.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        fs::create_dir_all(root).at(root)?;
        // Absolute paths: layer_paths feeds overlay mount options.
        let root = root.canonicalize().at(root)?;
        for dir in ["blobs/sha256", "layers", "l", "images", "tmp"] {
            let d = root.join(dir);
            fs::create_dir_all(&d).at(&d)?;
        }
        let lock_path = root.join("lock");
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .at(&lock_path)?;
        let flock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| ImageError::Locked { path: root.clone() })?;
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp).at(&tmp)? {
            let path = entry.at(&tmp)?.path();
            let res = if path.is_dir() && !path.is_symlink() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            res.at(&path)?;
        }
        Ok(Self {
            root,
            lock: Mutex::new(()),
            pending: Mutex::new(HashSet::new()),
            _flock: flock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A scratch directory on the store's file system (so its content can
    /// be renamed into the store), deleted on drop.
    pub fn tmp_dir(&self) -> Result<tempfile::TempDir, ImageError> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix("work-")
            .tempdir_in(&tmp)
            .at(&tmp)
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock leaves the files consistent (every
        // step is a rename), so a poisoned lock is still usable.
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- import -------------------------------------------------------

    /// Imports a root file system tarball, a `docker save` archive or an
    /// OCI layout (see the `archive` module). Returns the first image of
    /// the archive; `tag` replaces that image's tags from the archive.
    pub fn import(&self, path: &Path, tag: Option<&ImageRef>) -> Result<Image, ImageError> {
        let mut images = self.import_all(path, tag)?;
        Ok(images.remove(0))
    }

    /// Like `import`, returning every image the archive holds (never empty).
    pub fn import_all(
        &self,
        path: &Path,
        tag: Option<&ImageRef>,
    ) -> Result<Vec<Image>, ImageError> {
        let work = self.tmp_dir()?;
        match archive::detect(path)? {
            Source::Rootfs => Ok(vec![self.import_rootfs(path, tag, work.path())?]),
            Source::TarImages(scan) => {
                let plans = archive::plan(&scan)?;
                let staged = self.stage_plans(path, &plans, work.path(), |wanted, stage| {
                    archive::for_each_wanted(path, wanted, |name, r| stage(name, r))
                })?;
                self.publish_plans(plans, staged, tag)
            }
            Source::DirImages(dir) => {
                let plans = archive::plan(&dir)?;
                let staged = self.stage_plans(path, &plans, work.path(), |wanted, stage| {
                    let mut names: Vec<&String> = wanted.iter().collect();
                    names.sort();
                    for name in names {
                        let file = dir.file(name);
                        let mut f = std::io::BufReader::new(File::open(&file).at(&file)?);
                        stage(name, &mut f)?;
                    }
                    Ok(())
                })?;
                self.publish_plans(plans, staged, tag)
            }
        }
    }

    fn import_rootfs(
        &self,
        path: &Path,
        tag: Option<&ImageRef>,
        work: &Path,
    ) -> Result<Image, ImageError> {
        let mut stream = archive::open_stream(path)?;
        let staged = self
            .stage_layer(work, &mut stream, Expect::default())
            .map_err(|e| e.in_archive(path, "rootfs"))?;
        let config = default_config(&staged.record.diff_id)?;
        let bytes = canonical_json(&config)?;
        let id = sha256_digest(&bytes);
        let records = vec![staged.record.clone()];
        {
            let _g = self.locked();
            self.commit_layers(vec![staged])?;
            self.commit_image(&id, &bytes, &records, tag.into_iter().cloned().collect())?;
        }
        self.load_image(&id)
    }

    /// Streams the layers the plans need (those not already in the store)
    /// through `visit`, which calls `stage(path, reader)` for each wanted
    /// archive path.
    fn stage_plans(
        &self,
        archive_path: &Path,
        plans: &[ImagePlan],
        work: &Path,
        visit: impl FnOnce(
            &HashSet<String>,
            &mut dyn FnMut(&str, &mut dyn std::io::Read) -> Result<(), ImageError>,
        ) -> Result<(), ImageError>,
    ) -> Result<HashMap<String, StagedLayer>, ImageError> {
        let mut by_path: HashMap<String, &archive::LayerPlan> = HashMap::new();
        for layer in plans.iter().flat_map(|p| &p.layers) {
            if !self.has_layer(&layer.diff_id) {
                by_path.entry(layer.path.clone()).or_insert(layer);
            }
        }
        let wanted: HashSet<String> = by_path.keys().cloned().collect();
        let mut staged: HashMap<String, StagedLayer> = HashMap::new();
        let mut stage = |name: &str, r: &mut dyn std::io::Read| -> Result<(), ImageError> {
            let Some(layer) = by_path.get(name) else {
                return Ok(());
            };
            if staged.contains_key(&layer.diff_id) {
                return Ok(());
            }
            let expect = Expect {
                diff_id: Some(&layer.diff_id),
                digest: layer.digest.as_deref(),
                size: layer.size,
            };
            let s = self
                .stage_layer(work, r, expect)
                .map_err(|e| e.in_archive(archive_path, name))?;
            staged.insert(layer.diff_id.clone(), s);
            Ok(())
        };
        visit(&wanted, &mut stage)?;
        for layer in by_path.values() {
            if !staged.contains_key(&layer.diff_id) {
                return Err(ImageError::bad_archive(
                    archive_path,
                    &layer.path,
                    "layer missing from the archive",
                ));
            }
        }
        Ok(staged)
    }

    fn publish_plans(
        &self,
        plans: Vec<ImagePlan>,
        staged: HashMap<String, StagedLayer>,
        tag: Option<&ImageRef>,
    ) -> Result<Vec<Image>, ImageError> {
        let mut ids = Vec::new();
        {
            let _g = self.locked();
            self.commit_layers(staged.into_values().collect())?;
            for (i, plan) in plans.iter().enumerate() {
                let mut records = Vec::new();
                for layer in &plan.layers {
                    // A prune between our "already present" check and the
                    // lock could have taken a shared layer.
                    records.push(self.layer_record(&layer.diff_id).map_err(|_| {
                        ImageError::MissingLayer(format!(
                            "{} (removed by a concurrent prune; import again)",
                            layer.diff_id
                        ))
                    })?);
                }
                let tags = match tag {
                    Some(t) if i == 0 => vec![t.clone()],
                    _ => plan.tags.clone(),
                };
                self.commit_image(&plan.id, &plan.config_bytes, &records, tags)?;
                ids.push(plan.id.clone());
            }
        }
        ids.iter().map(|id| self.load_image(id)).collect()
    }

    /// Writes config blob, image record and tags, in that order. Caller
    /// holds the lock and has published the layers.
    fn commit_image(
        &self,
        id: &str,
        config: &[u8],
        layers: &[LayerRecord],
        tags: Vec<ImageRef>,
    ) -> Result<(), ImageError> {
        let blob = self.blob_path(id);
        if !blob.exists() {
            self.write_atomic(&blob, config)?;
        }
        let record = serde_json::to_vec(&ImageRecord {
            layers: layers.to_vec(),
        })
        .map_err(|e| ImageError::io(&blob, e.into()))?;
        self.write_atomic(&self.record_path(id), &record)?;
        if !tags.is_empty() {
            let mut index = self.load_tags()?;
            for t in tags {
                index.tags.insert(t.to_string(), id.to_string());
            }
            self.save_tags(&index)?;
        }
        Ok(())
    }

    // ---- export -------------------------------------------------------

    /// Writes a `docker load`-able tar of one image (see `save_many`).
    pub fn save(&self, reference: &str, out: &mut dyn Write) -> Result<(), ImageError> {
        self.save_many(&[reference], out)
    }

    /// Writes images as docker 25+ `save` does: an OCI layout plus the
    /// legacy manifest.json, layers uncompressed. A tag reference is saved
    /// with that tag; an id reference without tags, as Docker does.
    pub fn save_many(&self, references: &[&str], out: &mut dyn Write) -> Result<(), ImageError> {
        let mut items: Vec<archive::SaveItem> = Vec::new();
        for reference in references {
            let r = self.resolve_ref(reference)?;
            if let Some(item) = items.iter_mut().find(|i| i.id == r.id) {
                item.tags.extend(r.tag.filter(|t| !item.tags.contains(t)));
                continue;
            }
            let record: ImageRecord = read_json(&self.record_path(&r.id))?;
            let config_path = self.blob_path(&r.id);
            let config_bytes = fs::read(&config_path).at(&config_path)?;
            let mut layers = Vec::new();
            for l in &record.layers {
                let blob = self.blob_path(&l.diff_id);
                if !blob.is_file() {
                    return Err(ImageError::MissingLayer(l.diff_id.clone()));
                }
                layers.push((l.diff_id.clone(), blob));
            }
            items.push(archive::SaveItem {
                id: r.id,
                config_bytes,
                layers,
                tags: r.tag.into_iter().collect(),
            });
        }
        let mut out = BufWriter::new(out);
        archive::write_archive(&items, &mut out)?;
        out.flush().map_err(|e| ImageError::io("<output>", e))
    }

    // ---- queries ------------------------------------------------------

    /// Every image, newest first.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let tags = self.tags_by_image()?;
        let mut images = Vec::new();
        for id in self.image_ids()? {
            match self.load_image_with(&id, tags.get(&id).cloned().unwrap_or_default()) {
                Ok(image) => images.push(image),
                // One broken record should not hide every other image.
                Err(e) => tracing::warn!(image = %id, error = %e, "skipping unreadable image"),
            }
        }
        images.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
        Ok(images)
    }

    /// Finds an image by "name", "name:tag", "sha256:<hex>", "<hex>", or a
    /// unique id prefix of at least 4 hex digits. Tags win over id
    /// prefixes, as in Docker.
    pub fn resolve(&self, reference: &str) -> Result<Image, ImageError> {
        let r = self.resolve_ref(reference)?;
        self.load_image(&r.id)
    }

    fn resolve_ref(&self, reference: &str) -> Result<Resolved, ImageError> {
        if let Ok(r) = ImageRef::parse(reference) {
            let index = self.load_tags()?;
            if let Some(id) = index.tags.get(&r.to_string()) {
                if self.record_path(id).is_file() {
                    return Ok(Resolved {
                        id: id.clone(),
                        tag: Some(r),
                    });
                }
            }
        }
        let prefix = reference.strip_prefix("sha256:").unwrap_or(reference);
        let is_hex = prefix.len() >= 4
            && prefix.len() <= 64
            && prefix
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if is_hex {
            let matches: Vec<String> = self
                .image_ids()?
                .into_iter()
                .filter(|id| hex_of(id).starts_with(prefix))
                .collect();
            match matches.len() {
                0 => {}
                1 => {
                    return Ok(Resolved {
                        id: matches.into_iter().next().unwrap_or_default(),
                        tag: None,
                    })
                }
                count => {
                    return Err(ImageError::Ambiguous {
                        reference: reference.to_string(),
                        count,
                    })
                }
            }
        }
        Err(ImageError::NotFound(reference.to_string()))
    }

    /// Ids ("sha256:...") of the images whose layers include `diff_id`.
    pub fn images_using_layer(&self, diff_id: &str) -> Result<Vec<String>, ImageError> {
        let mut out = Vec::new();
        for id in self.image_ids()? {
            let record: ImageRecord = read_json(&self.record_path(&id))?;
            if record.layers.iter().any(|l| l.diff_id == diff_id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    // ---- tags and removal ---------------------------------------------

    /// Points `target` at the image `source` resolves to, moving the tag
    /// from any other image.
    pub fn tag(&self, source: &str, target: &ImageRef) -> Result<(), ImageError> {
        let _g = self.locked();
        let r = self.resolve_ref(source)?;
        let mut index = self.load_tags()?;
        index.tags.insert(target.to_string(), r.id);
        self.save_tags(&index)
    }

    /// Docker's rmi: a tag reference untags (and deletes the image when it
    /// was the last tag); an id deletes the image (refused when it has
    /// several tags unless `force`). When `in_use(id)` says a container
    /// uses the image, deleting it is refused unless `force`, and with
    /// `force` the image is only untagged (as Docker does for images of
    /// running containers), so the container keeps its layers.
    /// Returns Docker-style lines: "Untagged: web:1", "Deleted: sha256:...".
    /// Layers are reclaimed by `prune` or `gc_layers`, which know which
    /// layers containers hold. `in_use` runs under the store's lock: it must
    /// not call methods that change the store.
    pub fn remove(
        &self,
        reference: &str,
        force: bool,
        in_use: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<String>, ImageError> {
        let _g = self.locked();
        let r = self.resolve_ref(reference)?;
        let mut index = self.load_tags()?;
        let tags: Vec<String> = index
            .tags
            .iter()
            .filter(|(_, id)| **id == r.id)
            .map(|(t, _)| t.clone())
            .collect();
        let in_use_err = || ImageError::InUse {
            reference: reference.to_string(),
            id: r.id.clone(),
        };
        let untag: Vec<String> = match &r.tag {
            Some(t) if tags.len() > 1 => vec![t.to_string()],
            Some(t) => {
                if in_use(&r.id) && !force {
                    return Err(in_use_err());
                }
                vec![t.to_string()]
            }
            None => {
                if tags.len() > 1 && !force {
                    return Err(ImageError::MultipleTags {
                        reference: reference.to_string(),
                        id: r.id.clone(),
                        tags: tags.join(", "),
                    });
                }
                if in_use(&r.id) && !force {
                    return Err(in_use_err());
                }
                tags.clone()
            }
        };
        let mut lines = Vec::new();
        for t in &untag {
            index.tags.remove(t);
            lines.push(format!("Untagged: {t}"));
        }
        if !untag.is_empty() {
            self.save_tags(&index)?;
        }
        let last_tag_gone = untag.len() == tags.len();
        if last_tag_gone && !in_use(&r.id) {
            self.delete_image(&r.id)?;
            lines.push(format!("Deleted: {}", r.id));
        }
        Ok(lines)
    }

    /// Deletes untagged images not in use, then every layer that no
    /// remaining image references, that is not in `keep_layers` (diff_ids
    /// containers use) and that is not pending in an unfinished build.
    pub fn prune(
        &self,
        in_use: &dyn Fn(&str) -> bool,
        keep_layers: &HashSet<String>,
    ) -> Result<PruneReport, ImageError> {
        let _g = self.locked();
        let tagged: HashSet<String> = self.load_tags()?.tags.into_values().collect();
        let mut report = PruneReport::default();
        for id in self.image_ids()? {
            if !tagged.contains(&id) && !in_use(&id) {
                self.delete_image(&id)?;
                report.images_deleted.push(id);
            }
        }
        let (layers, bytes) = self.gc_unlocked_images(keep_layers)?;
        report.layers_deleted = layers;
        report.bytes_reclaimed = bytes;
        Ok(report)
    }

    /// Deletes only unreferenced layers (as the second half of `prune`),
    /// for use after `remove`.
    pub fn gc_layers(&self, keep_layers: &HashSet<String>) -> Result<PruneReport, ImageError> {
        let _g = self.locked();
        let (layers_deleted, bytes_reclaimed) = self.gc_unlocked_images(keep_layers)?;
        Ok(PruneReport {
            images_deleted: Vec::new(),
            layers_deleted,
            bytes_reclaimed,
        })
    }

    fn gc_unlocked_images(
        &self,
        keep_layers: &HashSet<String>,
    ) -> Result<(usize, u64), ImageError> {
        let mut referenced: HashSet<String> = keep_layers.clone();
        referenced.extend(
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
        let mut configs = HashSet::new();
        for id in self.image_ids()? {
            let record: ImageRecord = read_json(&self.record_path(&id))?;
            referenced.extend(record.layers.into_iter().map(|l| l.diff_id));
            configs.insert(id);
        }
        self.gc_locked(&referenced, &configs)
    }

    /// Removes the image record and its config blob. Caller holds the lock
    /// and has removed its tags.
    fn delete_image(&self, id: &str) -> Result<(), ImageError> {
        let record = self.record_path(id);
        fs::remove_file(&record).at(&record)?;
        fsync_dir(&self.root.join("images"))?;
        let blob = self.blob_path(id);
        match fs::remove_file(&blob) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ImageError::io(&blob, e)),
        }
    }

    // ---- layers for containers and builds -----------------------------

    /// The image's extracted layers, bottom first, ready to be overlayfs
    /// lowerdirs (whiteouts already in overlay form). Overlayfs lists
    /// lowerdirs top first, so reverse this for the mount option.
    ///
    /// Each path is `ROOT/l/SHORT` with SHORT 12 hex digits (a symlink to
    /// the layer tree), i.e. `root().len() + 16` bytes; with the mount
    /// options limited to one 4096-byte page, a root of 30 bytes leaves
    /// room for about 80 layers next to upperdir and workdir.
    pub fn layer_paths(&self, image: &Image) -> Result<Vec<PathBuf>, ImageError> {
        image
            .layers
            .iter()
            .map(|l| {
                if !valid_digest(&l.diff_id) || !self.has_layer(&l.diff_id) {
                    return Err(ImageError::MissingLayer(l.diff_id.clone()));
                }
                let short = self.short_name(&l.diff_id)?;
                self.ensure_link(&short, &l.diff_id)
            })
            .collect()
    }

    /// Turns an overlayfs upperdir into a layer: a deterministic tar
    /// (sorted entries; overlay whiteouts become `.wh.` files and opaque
    /// directories `.wh..wh..opq`), stored as blob and extracted tree. The
    /// layer is protected from prune until an image references it.
    pub fn add_layer_from_dir(&self, upper: &Path) -> Result<LayerRecord, ImageError> {
        self.add_layer_from_dir_excluding(upper, &[])
    }

    /// [`Self::add_layer_from_dir`] leaving out the entries at `exclude`
    /// (paths relative to `upper`): `commit` leaves out the /etc files the
    /// runtime generated.
    pub fn add_layer_from_dir_excluding(
        &self,
        upper: &Path,
        exclude: &[&Path],
    ) -> Result<LayerRecord, ImageError> {
        let work = self.tmp_dir()?;
        let tar_path = work.path().join("layer.tar");
        let file = File::create(&tar_path).at(&tar_path)?;
        let mut w = HashWriter::new(BufWriter::new(file));
        write_layer_tar_excluding(upper, exclude, &mut w)?;
        let (diff_id, buf) = w.finish();
        let file = buf
            .into_inner()
            .map_err(|e| ImageError::io(&tar_path, e.into_error()))?;
        file.sync_all().at(&tar_path)?;
        drop(file);

        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(diff_id.clone());
        let record = if self.has_layer(&diff_id) {
            None
        } else {
            Some(self.stage_tar_file(work.path(), tar_path, diff_id.clone())?)
        };
        let _g = self.locked();
        if let Some(staged) = record {
            self.commit_layers(vec![staged])?;
        }
        self.layer_record(&diff_id)
    }

    /// Stores a new image from `config` (its rootfs.diff_ids are replaced
    /// by `layers`') and layers already in the store, optionally tagging
    /// it (moving the tag from any other image). The config is written as
    /// canonical JSON (sorted keys), so the same config gives the same id.
    pub fn create_image(
        &self,
        mut config: ImageConfiguration,
        layers: Vec<LayerRecord>,
        tag: Option<&ImageRef>,
    ) -> Result<Image, ImageError> {
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let mut rootfs = config.rootfs().clone();
        rootfs.set_typ("layers".to_string());
        rootfs.set_diff_ids(diff_ids.clone());
        config.set_rootfs(rootfs);
        let bytes = canonical_json(&config)?;
        let id = sha256_digest(&bytes);
        {
            let _g = self.locked();
            let mut records = Vec::new();
            for d in &diff_ids {
                if !valid_digest(d) {
                    return Err(ImageError::MissingLayer(d.clone()));
                }
                records.push(self.layer_record(d)?);
            }
            self.commit_image(&id, &bytes, &records, tag.into_iter().cloned().collect())?;
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for d in &diff_ids {
                pending.remove(d);
            }
        }
        self.load_image(&id)
    }

    // ---- records and the tag index ------------------------------------

    fn record_path(&self, id: &str) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", hex_of(id)))
    }

    fn image_ids(&self) -> Result<Vec<String>, ImageError> {
        let dir = self.root.join("images");
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).at(&dir)? {
            let name = entry.at(&dir)?.file_name();
            let name = name.to_string_lossy();
            if let Some(hex) = name.strip_suffix(".json").filter(|h| archive::is_hex64(h)) {
                ids.push(format!("sha256:{hex}"));
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn load_image(&self, id: &str) -> Result<Image, ImageError> {
        let tags = self.tags_by_image()?.remove(id).unwrap_or_default();
        self.load_image_with(id, tags)
    }

    fn load_image_with(&self, id: &str, tags: Vec<ImageRef>) -> Result<Image, ImageError> {
        let record_path = self.record_path(id);
        if !record_path.is_file() {
            return Err(ImageError::NotFound(id.to_string()));
        }
        let record: ImageRecord = read_json(&record_path)?;
        let config: ImageConfiguration = read_json(&self.blob_path(id))?;
        Ok(Image {
            id: id.to_string(),
            tags,
            created: config.created().clone(),
            size: record.layers.iter().map(|l| l.size).sum(),
            layers: record.layers,
            config,
        })
    }

    fn tags_path(&self) -> PathBuf {
        self.root.join("repositories.json")
    }

    fn load_tags(&self) -> Result<TagIndex, ImageError> {
        let path = self.tags_path();
        if !path.exists() {
            return Ok(TagIndex::default());
        }
        read_json(&path)
    }

    fn save_tags(&self, index: &TagIndex) -> Result<(), ImageError> {
        let path = self.tags_path();
        let bytes =
            serde_json::to_vec_pretty(index).map_err(|e| ImageError::io(&path, e.into()))?;
        self.write_atomic(&path, &bytes)
    }

    fn tags_by_image(&self) -> Result<HashMap<String, Vec<ImageRef>>, ImageError> {
        let mut out: HashMap<String, Vec<ImageRef>> = HashMap::new();
        for (tag, id) in self.load_tags()?.tags {
            match ImageRef::parse(&tag) {
                Ok(r) => out.entry(id).or_default().push(r),
                Err(e) => {
                    tracing::warn!(tag, error = %e, "ignoring unparsable tag in repositories.json")
                }
            }
        }
        Ok(out)
    }
}

/// The config of an image imported from a plain root file system.
fn default_config(diff_id: &str) -> Result<ImageConfiguration, ImageError> {
    let err = |e: oci_spec::OciSpecError| ImageError::BadConfig {
        what: "default config".into(),
        reason: e.to_string(),
    };
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    ImageConfigurationBuilder::default()
        .created(now.clone())
        .architecture(Arch::default())
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .env(vec![DEFAULT_PATH.to_string()])
                .build()
                .map_err(err)?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![diff_id.to_string()])
                .build()
                .map_err(err)?,
        )
        .history(vec![HistoryBuilder::default()
            .created(now)
            .created_by("berth import")
            .build()
            .map_err(err)?])
        .build()
        .map_err(err)
}

#[cfg(test)]
mod tests;
