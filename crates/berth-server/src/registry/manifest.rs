//! What the registry checks in a pushed manifest: its media type (from
//! Content-Type, the `mediaType` field or its shape), that it is JSON of
//! schema version 2, and which blobs or manifests it references.

use super::error::RegistryError;
use super::names::digest_hex;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

const KNOWN: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// The media type to store a manifest under. `content_type` is the
/// request's header, which wins when it names a known type; it must then
/// agree with the manifest's own `mediaType` field, as the spec says.
pub fn media_type(content_type: Option<&str>, bytes: &[u8]) -> Result<String, RegistryError> {
    let json: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| RegistryError::ManifestInvalid(format!("not JSON: {e}")))?;
    if json.get("schemaVersion").and_then(|v| v.as_u64()) != Some(2) {
        return Err(RegistryError::ManifestInvalid(
            "schemaVersion must be 2 (schema 1 manifests are not supported)".into(),
        ));
    }
    let field = json.get("mediaType").and_then(|v| v.as_str());
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| KNOWN.contains(c));
    let chosen = match (header, field) {
        (Some(h), Some(f)) if h != f => {
            return Err(RegistryError::ManifestInvalid(format!(
                "Content-Type {h} does not match the manifest's mediaType {f}"
            )))
        }
        (Some(h), _) => h.to_string(),
        (None, Some(f)) if KNOWN.contains(&f) => f.to_string(),
        (None, Some(f)) => {
            return Err(RegistryError::ManifestInvalid(format!(
                "unsupported manifest media type {f}"
            )))
        }
        // OCI allows leaving mediaType out: tell by shape.
        (None, None) if json.get("manifests").is_some() => OCI_INDEX.to_string(),
        (None, None) if json.get("config").is_some() => OCI_MANIFEST.to_string(),
        (None, None) => {
            return Err(RegistryError::ManifestInvalid(
                "neither an image manifest nor an index".into(),
            ))
        }
    };
    Ok(chosen)
}

/// What a manifest points at: for an image manifest its config and layers
/// (blobs), for an index its manifests. Layers with `urls` (foreign,
/// non-distributable layers) are not expected in the registry.
pub fn references(media_type: &str, bytes: &[u8]) -> Result<Vec<String>, RegistryError> {
    let json: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| RegistryError::ManifestInvalid(format!("not JSON: {e}")))?;
    let digest_of = |d: &serde_json::Value, what: &str| -> Result<String, RegistryError> {
        let digest = d.get("digest").and_then(|v| v.as_str()).ok_or_else(|| {
            RegistryError::ManifestInvalid(format!("{what} descriptor without a digest"))
        })?;
        if digest_hex(digest).is_none() {
            return Err(RegistryError::ManifestInvalid(format!(
                "{what} digest {digest} is not sha256"
            )));
        }
        Ok(digest.to_string())
    };
    let list = |key: &str| -> Result<Vec<serde_json::Value>, RegistryError> {
        match json.get(key) {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(serde_json::Value::Array(a)) => Ok(a.clone()),
            Some(_) => Err(RegistryError::ManifestInvalid(format!(
                "{key} is not a list"
            ))),
        }
    };
    let mut out = Vec::new();
    if is_index(media_type) {
        for m in list("manifests")? {
            out.push(digest_of(&m, "manifest")?);
        }
    } else {
        let config = json
            .get("config")
            .ok_or_else(|| RegistryError::ManifestInvalid("no config descriptor".into()))?;
        out.push(digest_of(config, "config")?);
        for l in list("layers")? {
            let foreign = l
                .get("urls")
                .and_then(|u| u.as_array())
                .is_some_and(|u| !u.is_empty());
            if !foreign {
                out.push(digest_of(&l, "layer")?);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_from_header_field_or_shape() {
        let with_field = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{}}"#;
        assert_eq!(media_type(None, with_field).unwrap(), OCI_MANIFEST);
        assert_eq!(
            media_type(Some(OCI_MANIFEST), with_field).unwrap(),
            OCI_MANIFEST
        );
        assert!(media_type(Some(DOCKER_MANIFEST), with_field).is_err());
        let bare_index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            media_type(Some("application/json"), bare_index).unwrap(),
            OCI_INDEX
        );
        assert!(media_type(None, br#"{"schemaVersion":1}"#).is_err());
        assert!(media_type(None, b"nope").is_err());
    }

    #[test]
    fn references_of_manifests_and_indexes() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}"}},"layers":[{{"digest":"{}"}},{{"digest":"{}","urls":["http://x"]}}]}}"#,
            d('a'),
            d('b'),
            d('c')
        );
        assert_eq!(
            references(OCI_MANIFEST, m.as_bytes()).unwrap(),
            vec![d('a'), d('b')]
        );
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}"}}]}}"#,
            d('e')
        );
        assert_eq!(references(OCI_INDEX, i.as_bytes()).unwrap(), vec![d('e')]);
        let bad = r#"{"schemaVersion":2,"config":{"digest":"md5:x"}}"#;
        assert!(references(OCI_MANIFEST, bad.as_bytes()).is_err());
    }
}
