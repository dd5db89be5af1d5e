//! From an import source's JSON files to a list of images to import:
//! `docker save`'s manifest.json (legacy) or an OCI index.json.

use berth_types::ImageRef;
use oci_spec::image::{Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, Os};
use serde::Deserialize;

use super::compress::sha256_digest;
use super::source::{is_hex64, MetaSource};
use crate::error::ImageError;

/// One image found in an archive.
#[derive(Debug)]
pub(crate) struct ImagePlan {
    /// "sha256:<hex>" of `config_bytes`.
    pub(crate) id: String,
    /// Kept byte for byte: the image id is the digest of these bytes.
    pub(crate) config_bytes: Vec<u8>,
    pub(crate) layers: Vec<LayerPlan>,
    pub(crate) tags: Vec<ImageRef>,
}

#[derive(Debug, Clone)]
pub(crate) struct LayerPlan {
    /// The archive path of the (possibly compressed) layer tar.
    pub(crate) path: String,
    /// From the config's rootfs.diff_ids: digest of the uncompressed tar.
    pub(crate) diff_id: String,
    /// Digest and size of the blob as stored, when the archive states them.
    pub(crate) digest: Option<String>,
    pub(crate) size: Option<u64>,
}

/// `docker save`'s manifest.json: one object per image.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LegacyEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Option<Vec<String>>,
}

const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Whether a string is a digest the store can use as a file name.
pub(crate) fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(is_hex64)
}

/// Reads the images an archive holds. manifest.json wins over index.json:
/// docker 25+ writes both, and the legacy file carries the familiar tags.
pub(crate) fn plan(src: &dyn MetaSource) -> Result<Vec<ImagePlan>, ImageError> {
    let plans = if src.has("manifest.json") {
        plan_legacy(src)?
    } else {
        plan_oci(src)?
    };
    if plans.is_empty() {
        return Err(ImageError::bad_archive(
            src.label(),
            "manifest",
            "the archive holds no image",
        ));
    }
    Ok(plans)
}

fn plan_legacy(src: &dyn MetaSource) -> Result<Vec<ImagePlan>, ImageError> {
    let bad = |what: &str, reason: &dyn std::fmt::Display| {
        ImageError::bad_archive(src.label(), what, reason)
    };
    let bytes = src.read_small("manifest.json")?;
    let entries: Vec<LegacyEntry> =
        serde_json::from_slice(&bytes).map_err(|e| bad("manifest.json", &e))?;
    let mut plans = Vec::new();
    for entry in entries {
        let config_path = src.resolve(&entry.config)?;
        let config_bytes = src.read_small(&config_path)?;
        let id = sha256_digest(&config_bytes);
        if let Some(want) = digest_from_path(&config_path) {
            if want != id {
                return Err(bad(
                    &entry.config,
                    &format!("content digest {id} does not match its name"),
                ));
            }
        }
        let config = parse_config(src, &entry.config, &config_bytes)?;
        let paths = entry.layers.unwrap_or_default();
        let diff_ids = config.rootfs().diff_ids();
        if paths.len() != diff_ids.len() {
            return Err(bad(
                &entry.config,
                &format!(
                    "{} layers listed in manifest.json but {} diff_ids in the config",
                    paths.len(),
                    diff_ids.len()
                ),
            ));
        }
        let mut layers = Vec::new();
        for (path, diff_id) in paths.iter().zip(diff_ids) {
            let real = src.resolve(path)?;
            layers.push(LayerPlan {
                digest: digest_from_path(&real),
                path: real,
                diff_id: diff_id.clone(),
                size: None,
            });
        }
        let tags = entry
            .repo_tags
            .unwrap_or_default()
            .iter()
            .filter_map(|t| parse_tag(t))
            .collect();
        plans.push(ImagePlan {
            id,
            config_bytes,
            layers,
            tags,
        });
    }
    Ok(plans)
}

fn plan_oci(src: &dyn MetaSource) -> Result<Vec<ImagePlan>, ImageError> {
    let bytes = src.read_small("index.json")?;
    let index: ImageIndex = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::bad_archive(src.label(), "index.json", e))?;
    let mut plans = Vec::new();
    for desc in index.manifests() {
        let manifest = resolve_manifest(src, desc, 0)?;
        let config_desc = manifest.config();
        let config_bytes = read_blob(src, config_desc)?;
        let what = config_desc.digest().to_string();
        let config = parse_config(src, &what, &config_bytes)?;
        let diff_ids = config.rootfs().diff_ids();
        if manifest.layers().len() != diff_ids.len() {
            return Err(ImageError::bad_archive(
                src.label(),
                what,
                format!(
                    "{} layers in the manifest but {} diff_ids in the config",
                    manifest.layers().len(),
                    diff_ids.len()
                ),
            ));
        }
        let mut layers = Vec::new();
        for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let path = blob_path(src, layer)?;
            layers.push(LayerPlan {
                path: src.resolve(&path)?,
                diff_id: diff_id.clone(),
                digest: Some(layer.digest().to_string()),
                size: Some(layer.size()),
            });
        }
        let tags = tags_from_annotations(desc);
        plans.push(ImagePlan {
            id: sha256_digest(&config_bytes),
            config_bytes,
            layers,
            tags,
        });
    }
    Ok(plans)
}

/// Follows nested indexes (multi-platform images) down to the manifest for
/// this host's platform.
fn resolve_manifest(
    src: &dyn MetaSource,
    desc: &Descriptor,
    depth: u32,
) -> Result<ImageManifest, ImageError> {
    let what = desc.digest().to_string();
    let bad = |reason: &dyn std::fmt::Display| {
        ImageError::bad_archive(src.label(), what.as_str(), reason)
    };
    if depth > 4 {
        return Err(bad(&"indexes nested too deeply"));
    }
    let media = desc.media_type().to_string();
    let bytes = read_blob(src, desc)?;
    if MANIFEST_TYPES.contains(&media.as_str()) {
        return serde_json::from_slice(&bytes).map_err(|e| bad(&e));
    }
    if !INDEX_TYPES.contains(&media.as_str()) {
        return Err(bad(&format!("unsupported media type {media}")));
    }
    let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|e| bad(&e))?;
    let chosen = host_manifest(&index).ok_or_else(|| {
        bad(&format!(
            "no manifest for {}/{}",
            Os::default(),
            Arch::default()
        ))
    })?;
    resolve_manifest(src, chosen, depth + 1)
}

/// The entry of an image index for this host's platform, or its first
/// entry when no entry names a platform at all.
pub(crate) fn host_manifest(index: &ImageIndex) -> Option<&Descriptor> {
    let (os, arch) = (Os::default(), Arch::default());
    index
        .manifests()
        .iter()
        .find(|d| {
            d.platform()
                .as_ref()
                .is_some_and(|p| *p.os() == os && *p.architecture() == arch)
        })
        .or_else(|| {
            let all_unplatformed = index.manifests().iter().all(|d| d.platform().is_none());
            index.manifests().first().filter(|_| all_unplatformed)
        })
}

fn blob_path(src: &dyn MetaSource, desc: &Descriptor) -> Result<String, ImageError> {
    let digest = desc.digest().to_string();
    if !valid_digest(&digest) {
        return Err(ImageError::bad_archive(
            src.label(),
            digest,
            "only sha256 digests are supported",
        ));
    }
    Ok(format!("blobs/{}", digest.replacen(':', "/", 1)))
}

/// A small blob, checked against its descriptor's digest and size.
fn read_blob(src: &dyn MetaSource, desc: &Descriptor) -> Result<Vec<u8>, ImageError> {
    let path = blob_path(src, desc)?;
    let bytes = src.read_small(&path)?;
    let digest = sha256_digest(&bytes);
    let want = desc.digest().to_string();
    if digest != want {
        return Err(ImageError::bad_archive(
            src.label(),
            path,
            format!("content digest is {digest}, expected {want}"),
        ));
    }
    if bytes.len() as u64 != desc.size() {
        return Err(ImageError::bad_archive(
            src.label(),
            path,
            format!("size is {}, descriptor says {}", bytes.len(), desc.size()),
        ));
    }
    Ok(bytes)
}

fn parse_config(
    src: &dyn MetaSource,
    what: &str,
    bytes: &[u8],
) -> Result<ImageConfiguration, ImageError> {
    let config: ImageConfiguration = serde_json::from_slice(bytes).map_err(|e| {
        ImageError::bad_archive(src.label(), what, format!("bad image config: {e}"))
    })?;
    if let Some(bad) = config.rootfs().diff_ids().iter().find(|d| !valid_digest(d)) {
        return Err(ImageError::bad_archive(
            src.label(),
            what,
            format!("bad diff_id {bad:?}"),
        ));
    }
    Ok(config)
}

/// `blobs/sha256/<hex>` and `<hex>.json` name their content's digest.
fn digest_from_path(path: &str) -> Option<String> {
    let name = path
        .strip_prefix("blobs/sha256/")
        .or_else(|| path.strip_suffix(".json"))?;
    is_hex64(name).then(|| format!("sha256:{name}"))
}

/// Tags from an index entry's annotations: containerd's full name, or the
/// OCI ref name when it is a full reference rather than a bare tag.
fn tags_from_annotations(desc: &Descriptor) -> Vec<ImageRef> {
    let Some(ann) = desc.annotations() else {
        return Vec::new();
    };
    if let Some(name) = ann.get("io.containerd.image.name") {
        return parse_tag(name).into_iter().collect();
    }
    match ann.get("org.opencontainers.image.ref.name") {
        Some(r) if r.contains(':') || r.contains('/') => parse_tag(r).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Parses a tag as an archive writes it, in Docker's familiar form
/// (`docker.io/library/busybox:1` becomes `busybox:1`). Unparsable tags are
/// dropped with a warning: the image is still worth importing.
pub(crate) fn parse_tag(s: &str) -> Option<ImageRef> {
    let short = [
        "docker.io/library/",
        "index.docker.io/library/",
        "docker.io/",
        "index.docker.io/",
    ]
    .iter()
    .find_map(|p| s.strip_prefix(p))
    .unwrap_or(s);
    match ImageRef::parse(short) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(tag = s, error = %e, "ignoring unusable tag in archive");
            None
        }
    }
}

/// The name Docker 25 writes into io.containerd.image.name.
pub(crate) fn full_name(r: &ImageRef) -> String {
    let first = r.name.split('/').next().unwrap_or("");
    let has_registry = r.name.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_registry {
        r.to_string()
    } else if r.name.contains('/') {
        format!("docker.io/{r}")
    } else {
        format!("docker.io/library/{r}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_names_round_trip() {
        for s in [
            "busybox:1",
            "team/app:v2",
            "reg.local:5000/app:x",
            "localhost/a:b",
        ] {
            let r = ImageRef::parse(s).unwrap();
            assert_eq!(parse_tag(&full_name(&r)), Some(r), "{s}");
        }
        assert_eq!(
            full_name(&ImageRef::parse("web").unwrap()),
            "docker.io/library/web:latest"
        );
        assert_eq!(parse_tag("Bad Tag"), None);
    }

    #[test]
    fn digests_from_paths() {
        let hex = "0".repeat(64);
        assert_eq!(
            digest_from_path(&format!("blobs/sha256/{hex}")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(
            digest_from_path(&format!("{hex}.json")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(digest_from_path(&format!("{hex}/layer.tar")), None);
        assert!(!valid_digest("sha256:../../etc"));
    }
}
