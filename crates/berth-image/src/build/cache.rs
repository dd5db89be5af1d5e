//! The build cache: one JSON file per step under
//! `<store root>/build-cache/<key>.json`, mapping a step key to the layer
//! (if any) and image config the step produced.
//!
//! A key is sha256 of the parent state (layer diff ids + a digest of the
//! config without timestamps), the step's text after expansion, and extra
//! inputs such as a hash of the files a COPY reads. Entries are written
//! atomically (temp file + rename) so a crashed build never leaves a
//! half-written entry that a later build trusts.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::LayerRecord;

/// Bumped whenever the key or entry format changes.
const KEY_VERSION: &str = "berth-build-cache-v1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub layer: Option<LayerRecord>,
    pub config: ImageConfiguration,
}

pub(crate) struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(store_root: &Path) -> Self {
        Self {
            dir: store_root.join("build-cache"),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The entry for `key`; unreadable or corrupt entries are misses.
    pub fn get(&self, key: &str) -> Option<Entry> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn put(&self, key: &str, entry: &Entry) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        serde_json::to_writer(&mut tmp, entry).map_err(io::Error::other)?;
        tmp.as_file_mut().flush()?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.path(key)).map_err(|e| e.error)?;
        Ok(())
    }
}

/// A digest of a build state: its layers and its config, with the times
/// (image and history `created`) left out so that a state reached from the
/// cache and the same state built again agree.
pub(crate) fn state_digest(layers: &[LayerRecord], config: &ImageConfiguration) -> String {
    let mut c = config.clone();
    c.set_created(None);
    if let Some(history) = c.history_mut() {
        for h in history.iter_mut() {
            h.set_created(None);
        }
    }
    let value = serde_json::to_value(&c).unwrap_or(serde_json::Value::Null);
    let mut h = Sha256::new();
    h.update(KEY_VERSION.as_bytes());
    for l in layers {
        h.update([0]);
        h.update(l.diff_id.as_bytes());
    }
    h.update([1]);
    h.update(canonical_json(&value).as_bytes());
    hex::encode(h.finalize())
}

/// The cache key of a step.
pub(crate) fn step_key(state: &str, text: &str, extra: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(KEY_VERSION.as_bytes());
    h.update([0]);
    h.update(state.as_bytes());
    h.update([0]);
    h.update(text.as_bytes());
    h.update([0]);
    h.update(extra);
    hex::encode(h.finalize())
}

/// JSON with object keys sorted, so maps serialized from a HashMap (labels,
/// exposed ports) digest the same every time.
pub(crate) fn canonical_json(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let body: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        Value::String(k.clone()),
                        canonical_json(&map[k.as_str()])
                    )
                })
                .collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(items) => {
            let body: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", body.join(","))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{Config, History};
    use std::collections::HashMap;

    fn config(labels: &[(&str, &str)], created: &str) -> ImageConfiguration {
        let mut cfg = Config::default();
        let map: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        cfg.set_labels(Some(map));
        let mut c = ImageConfiguration::default();
        c.set_config(Some(cfg));
        c.set_created(Some(created.to_string()));
        let mut h = History::default();
        h.set_created(Some(created.to_string()));
        h.set_created_by(Some("ENV a=b".to_string()));
        c.set_history(Some(vec![h]));
        c
    }

    #[test]
    fn digest_ignores_times_and_map_order() {
        let labels: Vec<(String, String)> = (0..20)
            .map(|i| (format!("k{i}"), format!("v{i}")))
            .collect();
        let refs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let a = state_digest(&[], &config(&refs, "2020-01-01T00:00:00Z"));
        let mut rev = refs.clone();
        rev.reverse();
        let b = state_digest(&[], &config(&rev, "2024-01-01T00:00:00Z"));
        assert_eq!(a, b);
        let c = state_digest(&[], &config(&refs[1..], "2020-01-01T00:00:00Z"));
        assert_ne!(a, c);
        let layer = LayerRecord {
            diff_id: "sha256:00".into(),
            size: 1,
        };
        assert_ne!(
            a,
            state_digest(&[layer], &config(&refs, "2020-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn put_get_roundtrip_and_corrupt_entries_miss() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::new(tmp.path());
        assert!(cache.get("k").is_none());
        let e = Entry {
            layer: None,
            config: config(&[("a", "b")], "2020-01-01T00:00:00Z"),
        };
        cache.put("k", &e).unwrap();
        let got = cache.get("k").unwrap();
        assert_eq!(got.config, e.config);
        std::fs::write(tmp.path().join("build-cache/bad.json"), "{").unwrap();
        assert!(cache.get("bad").is_none());
        assert_eq!(
            std::fs::read_dir(tmp.path().join("build-cache"))
                .unwrap()
                .count(),
            2,
            "no temp files left behind"
        );
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[1,"x"],"c":null}}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":{"c":null,"d":[1,"x"]},"b":1}"#);
    }
}
