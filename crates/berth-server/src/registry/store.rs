//! The registry's files under the server's data directory.
//!
//! Layout under the root:
//! - `blobs/sha256/HEX`: every blob (layers, configs, manifests) once,
//!   whichever repositories use it: pushing a layer that any repository
//!   already has costs nothing;
//! - `repositories/NAME/_manifests/HEX`: the manifest HEX belongs to the
//!   repository; the file holds its media type;
//! - `repositories/NAME/_tags/TAG`: the digest the tag points at;
//! - `uploads/ID`: data of an upload session in progress;
//! - `tmp/`: staging for blobs fetched from peers and small files.
//!
//! NAME may have slashes (nested directories). No name component starts
//! with `_`, so `_manifests` and `_tags` never collide with a repository.
//! Every file is written to a temporary name, fsynced, renamed into place
//! and its directory fsynced; `open` empties uploads/ and tmp/, so a crash
//! leaves no half-written blob under a real name.

use super::error::RegistryError;
use super::names::{digest_hex, valid_name, valid_tag, Reference};
use super::peers::Peers;
use super::uploads::Uploads;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Limits of the registry; the defaults suit a small cluster.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Bytes held by all upload sessions together (also the largest blob).
    pub max_upload_bytes: u64,
    /// Upload sessions open at once.
    pub max_sessions: usize,
    /// An upload session untouched this long is abandoned and deleted.
    pub session_ttl: Duration,
    /// Largest manifest accepted (the distribution registry's is 4 MiB).
    pub max_manifest_bytes: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 10 << 30,
            max_sessions: 256,
            session_ttl: Duration::from_secs(3600),
            max_manifest_bytes: 4 << 20,
        }
    }
}

/// A manifest as stored: its bytes are served exactly as pushed, so the
/// digest clients computed stays valid.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

pub struct RegistryStore {
    root: PathBuf,
    pub(crate) config: RegistryConfig,
    pub(crate) uploads: Uploads,
    pub(crate) peers: Option<Peers>,
    /// One fetch from the peers per digest at a time: agents pulling the
    /// same image at once must not download it once each.
    pub(crate) fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |e| RegistryError::io(path, e)
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), RegistryError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(at(dir))
}

impl RegistryStore {
    /// Opens (creating) the store at `root`, deleting whatever uploads and
    /// staging files an earlier run left: their sessions died with it.
    pub fn open(root: &Path, config: RegistryConfig) -> Result<Self, RegistryError> {
        for dir in ["blobs/sha256", "repositories", "uploads", "tmp"] {
            let d = root.join(dir);
            fs::create_dir_all(&d).map_err(at(&d))?;
        }
        for dir in ["uploads", "tmp"] {
            let d = root.join(dir);
            for entry in fs::read_dir(&d).map_err(at(&d))? {
                let path = entry.map_err(at(&d))?.path();
                let r = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                r.map_err(at(&path))?;
            }
        }
        Ok(Self {
            uploads: Uploads::new(root.join("uploads")),
            root: root.to_path_buf(),
            config,
            peers: None,
            fetching: Mutex::new(HashMap::new()),
        })
    }

    /// Lets the store fetch what it lacks from the other servers before
    /// answering "unknown": `peers` lists their API addresses (`host:port`
    /// or a URL; this server's own address may be in it, it is skipped by
    /// the peer marker), `token` is sent as a Bearer token.
    pub fn with_peers(
        mut self,
        peers: impl Fn() -> Vec<String> + Send + Sync + 'static,
        token: Option<String>,
    ) -> Self {
        self.peers = Some(Peers::new(Box::new(peers), token, None));
        self
    }

    /// Like [`RegistryStore::with_peers`], for servers that speak HTTPS:
    /// peers are called with `tls` (trusting the cluster CA).
    pub fn with_tls_peers(
        mut self,
        peers: impl Fn() -> Vec<String> + Send + Sync + 'static,
        token: Option<String>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        self.peers = Some(Peers::new(Box::new(peers), token, Some(tls)));
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    // ---- blobs ----------------------------------------------------------

    /// Where a blob lives; None for a digest that is not sha256.
    pub fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        digest_hex(digest).map(|h| self.root.join("blobs/sha256").join(h))
    }

    /// The blob's size, if the store has it.
    pub fn blob_size(&self, digest: &str) -> Option<u64> {
        let path = self.blob_path(digest)?;
        fs::metadata(path)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_size(digest).is_some()
    }

    /// A fresh name in tmp/ (on the store's file system, so it renames).
    pub(crate) fn tmp_path(&self, what: &str) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{what}-{:016x}", rand::random::<u64>()))
    }

    /// Moves a verified, fsynced file into place as the blob `digest`. If
    /// the blob is already there (another upload won), the file is dropped.
    pub(crate) fn commit_blob(&self, file: &Path, digest: &str) -> Result<(), RegistryError> {
        let dest = self
            .blob_path(digest)
            .ok_or_else(|| RegistryError::DigestInvalid(digest.to_string()))?;
        if dest.is_file() {
            let _ = fs::remove_file(file);
            return Ok(());
        }
        fs::rename(file, &dest).map_err(at(&dest))?;
        fsync_dir(&self.root.join("blobs/sha256"))
    }

    /// Stores small content (a manifest) as a blob.
    fn put_blob_bytes(&self, bytes: &[u8]) -> Result<String, RegistryError> {
        let digest = sha256_digest(bytes);
        if !self.has_blob(&digest) {
            let tmp = self.tmp_path("blob");
            write_synced(&tmp, bytes)?;
            self.commit_blob(&tmp, &digest)?;
        }
        Ok(digest)
    }

    // ---- manifests and tags ---------------------------------------------

    fn repo_dir(&self, name: &str) -> Result<PathBuf, RegistryError> {
        if !valid_name(name) {
            return Err(RegistryError::NameInvalid(name.to_string()));
        }
        Ok(self.root.join("repositories").join(name))
    }

    pub fn has_repository(&self, name: &str) -> bool {
        self.repo_dir(name)
            .is_ok_and(|d| d.join("_manifests").is_dir())
    }

    /// Stores a manifest (already validated) in repository `name`, tagging
    /// it when `reference` is a tag. Returns its digest.
    pub fn put_manifest(
        &self,
        name: &str,
        reference: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, RegistryError> {
        let repo = self.repo_dir(name)?;
        let digest = self.put_blob_bytes(bytes)?;
        let hex = digest_hex(&digest).unwrap_or_default().to_string();
        let manifests = repo.join("_manifests");
        fs::create_dir_all(&manifests).map_err(at(&manifests))?;
        self.write_atomic(&manifests.join(&hex), media_type.as_bytes())?;
        if let Reference::Tag(tag) = reference {
            let tags = repo.join("_tags");
            fs::create_dir_all(&tags).map_err(at(&tags))?;
            self.write_atomic(&tags.join(tag), digest.as_bytes())?;
        }
        Ok(digest)
    }

    /// The manifest a tag or digest names in repository `name`, if here.
    pub fn get_manifest(
        &self,
        name: &str,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>, RegistryError> {
        let repo = self.repo_dir(name)?;
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => {
                if !valid_tag(t) {
                    return Err(RegistryError::TagInvalid(t.clone()));
                }
                match read_opt(&repo.join("_tags").join(t))? {
                    Some(d) => String::from_utf8_lossy(&d).trim().to_string(),
                    None => return Ok(None),
                }
            }
        };
        let Some(hex) = digest_hex(&digest) else {
            return Err(RegistryError::DigestInvalid(digest));
        };
        let Some(media_type) = read_opt(&repo.join("_manifests").join(hex))? else {
            return Ok(None);
        };
        let Some(path) = self.blob_path(&digest) else {
            return Ok(None);
        };
        let Some(bytes) = read_opt(&path)? else {
            return Ok(None);
        };
        Ok(Some(StoredManifest {
            digest,
            media_type: String::from_utf8_lossy(&media_type).trim().to_string(),
            bytes,
        }))
    }

    /// Deletes a tag, or a manifest by digest together with the tags that
    /// point at it. The blob stays (other repositories may share it).
    /// Returns whether anything was deleted.
    pub fn delete_manifest(
        &self,
        name: &str,
        reference: &Reference,
    ) -> Result<bool, RegistryError> {
        let repo = self.repo_dir(name)?;
        let tags_dir = repo.join("_tags");
        match reference {
            Reference::Tag(t) => {
                if !valid_tag(t) {
                    return Err(RegistryError::TagInvalid(t.clone()));
                }
                remove_opt(&tags_dir.join(t))
            }
            Reference::Digest(d) => {
                let Some(hex) = digest_hex(d) else {
                    return Err(RegistryError::DigestInvalid(d.clone()));
                };
                let found = remove_opt(&repo.join("_manifests").join(hex))?;
                for tag in self.tags(name)?.unwrap_or_default() {
                    let path = tags_dir.join(&tag);
                    if read_opt(&path)?.is_some_and(|v| String::from_utf8_lossy(&v).trim() == d) {
                        remove_opt(&path)?;
                    }
                }
                Ok(found)
            }
        }
    }

    /// The repository's tags, sorted; None when the repository is unknown.
    pub fn tags(&self, name: &str) -> Result<Option<Vec<String>>, RegistryError> {
        let repo = self.repo_dir(name)?;
        if !repo.join("_manifests").is_dir() {
            return Ok(None);
        }
        let dir = repo.join("_tags");
        let mut tags = Vec::new();
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(at(&dir))?;
                    let tag = entry.file_name().to_string_lossy().into_owned();
                    if valid_tag(&tag) {
                        tags.push(tag);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RegistryError::io(&dir, e)),
        }
        tags.sort();
        Ok(Some(tags))
    }

    /// Every repository with at least one manifest, sorted.
    pub fn repositories(&self) -> Result<Vec<String>, RegistryError> {
        let base = self.root.join("repositories");
        let mut out = Vec::new();
        let mut stack = vec![String::new()];
        while let Some(prefix) = stack.pop() {
            let dir = if prefix.is_empty() {
                base.clone()
            } else {
                base.join(&prefix)
            };
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(RegistryError::io(&dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(at(&dir))?;
                let file = entry.file_name().to_string_lossy().into_owned();
                if file.starts_with('_') || !entry.path().is_dir() {
                    continue;
                }
                let name = if prefix.is_empty() {
                    file
                } else {
                    format!("{prefix}/{file}")
                };
                if entry.path().join("_manifests").is_dir() {
                    out.push(name.clone());
                }
                stack.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
        let tmp = self.tmp_path("meta");
        write_synced(&tmp, bytes)?;
        if let Err(e) = fs::rename(&tmp, path) {
            let _ = fs::remove_file(&tmp);
            return Err(RegistryError::io(path, e));
        }
        match path.parent() {
            Some(dir) => fsync_dir(dir),
            None => Ok(()),
        }
    }

    /// Deletes upload sessions untouched for longer than the configured
    /// time to live. Returns how many went.
    pub fn reap_uploads(&self) -> usize {
        self.uploads.reap(self.config.session_ttl)
    }

    /// Bytes held by upload sessions in progress.
    pub fn upload_bytes(&self) -> u64 {
        self.uploads.in_flight()
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    let res = File::create(path).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = res {
        let _ = fs::remove_file(path);
        return Err(RegistryError::io(path, e));
    }
    Ok(())
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, RegistryError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RegistryError::io(path, e)),
    }
}

fn remove_opt(path: &Path) -> Result<bool, RegistryError> {
    match fs::remove_file(path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                fsync_dir(dir)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(RegistryError::io(path, e)),
    }
}
