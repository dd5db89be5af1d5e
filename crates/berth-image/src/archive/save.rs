//! Writing images as `docker save` does since Docker 25: an OCI layout
//! (oci-layout, index.json, blobs/sha256/...) plus the legacy manifest.json
//! pointing into the same blobs, so both `docker load` and OCI tools read it.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;

use berth_types::ImageRef;
use oci_spec::image::{Descriptor, Digest, ImageIndexBuilder, ImageManifestBuilder, MediaType};
use serde_json::json;

use super::canonical_json;
use super::manifest::full_name;
use crate::error::{ImageError, IoContext};

/// One image to write.
pub(crate) struct SaveItem {
    pub(crate) id: String,
    pub(crate) config_bytes: Vec<u8>,
    /// (diff_id, uncompressed tar blob in the store), bottom first.
    pub(crate) layers: Vec<(String, PathBuf)>,
    pub(crate) tags: Vec<ImageRef>,
}

fn digest(s: &str) -> Result<Digest, ImageError> {
    Digest::from_str(s).map_err(|e| ImageError::BadConfig {
        what: s.to_string(),
        reason: e.to_string(),
    })
}

fn blob_name(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

fn spec_err(e: oci_spec::OciSpecError) -> ImageError {
    ImageError::BadConfig {
        what: "manifest".into(),
        reason: e.to_string(),
    }
}

pub(crate) fn write_archive(items: &[SaveItem], out: &mut dyn Write) -> Result<(), ImageError> {
    let w = |r: std::io::Result<()>| r.map_err(|e| ImageError::io("<output>", e));
    let mut b = tar::Builder::new(out);
    let mut written: HashSet<String> = HashSet::new();
    let mut index_entries = Vec::new();
    let mut legacy = Vec::new();

    for d in ["blobs", "blobs/sha256"] {
        let mut h = header(tar::EntryType::Directory, 0);
        h.set_mode(0o755);
        w(b.append_data(&mut h, d, std::io::empty()))?;
    }
    for item in items {
        let mut layer_descs = Vec::new();
        let mut layer_paths = Vec::new();
        for (diff_id, blob) in &item.layers {
            let file = std::fs::File::open(blob).at(blob)?;
            let len = file.metadata().at(blob)?.len();
            let name = blob_name(diff_id);
            if written.insert(name.clone()) {
                let mut h = header(tar::EntryType::Regular, len);
                b.append_data(&mut h, &name, file).at(blob)?;
            }
            layer_descs.push(Descriptor::new(
                MediaType::ImageLayer,
                len,
                digest(diff_id)?,
            ));
            layer_paths.push(name);
        }
        let config_name = blob_name(&item.id);
        if written.insert(config_name.clone()) {
            append_bytes(&mut b, &config_name, &item.config_bytes)?;
        }
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(Descriptor::new(
                MediaType::ImageConfig,
                item.config_bytes.len() as u64,
                digest(&item.id)?,
            ))
            .layers(layer_descs)
            .build()
            .map_err(spec_err)?;
        let manifest_bytes = canonical_json(&manifest)?;
        let manifest_digest = super::compress::sha256_digest(&manifest_bytes);
        let manifest_name = blob_name(&manifest_digest);
        if written.insert(manifest_name.clone()) {
            append_bytes(&mut b, &manifest_name, &manifest_bytes)?;
        }
        let mut desc = Descriptor::new(
            MediaType::ImageManifest,
            manifest_bytes.len() as u64,
            digest(&manifest_digest)?,
        );
        if item.tags.is_empty() {
            index_entries.push(desc.clone());
        }
        for tag in &item.tags {
            desc.set_annotations(Some(HashMap::from([
                ("io.containerd.image.name".to_string(), full_name(tag)),
                (
                    "org.opencontainers.image.ref.name".to_string(),
                    tag.tag.clone(),
                ),
            ])));
            index_entries.push(desc.clone());
        }
        let repo_tags: Option<Vec<String>> =
            (!item.tags.is_empty()).then(|| item.tags.iter().map(|t| t.to_string()).collect());
        legacy.push(json!({
            "Config": config_name,
            "RepoTags": repo_tags,
            "Layers": layer_paths,
        }));
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(index_entries)
        .build()
        .map_err(spec_err)?;
    append_bytes(&mut b, "index.json", &canonical_json(&index)?)?;
    append_bytes(&mut b, "manifest.json", &canonical_json(&legacy)?)?;
    append_bytes(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    w(b.finish())?;
    Ok(())
}

fn header(kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append_bytes<W: Write>(
    b: &mut tar::Builder<W>,
    name: &str,
    data: &[u8],
) -> Result<(), ImageError> {
    let mut h = header(tar::EntryType::Regular, data.len() as u64);
    b.append_data(&mut h, name, data)
        .map_err(|e| ImageError::io("<output>", e))
}
