//! Pushing images to and pulling them from a registry that speaks the OCI
//! distribution API (the cluster's servers, or any standard registry over
//! plain HTTP or HTTPS).
//!
//! The cluster's servers speak HTTPS when the cluster has a token, under
//! the cluster CA derived from the token: [`with_servers`] does that for
//! `host:port` addresses when given a token.
//!
//! Push sends the store's blobs as they are: layers uncompressed (their
//! digest is their diff_id) and the config byte for byte, so the same
//! layer always has the same digest and a layer the registry already holds,
//! under any repository, is skipped after one HEAD. Pull fetches only the
//! layers the store lacks, lays the image out as an OCI layout in the
//! store's tmp/ and imports it, so every digest is checked by the same code
//! that imports archives.
//!
//! Everything here blocks (file and network I/O): async callers run it in
//! `spawn_blocking`.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use berth_types::ImageRef;
use oci_spec::image::{
    Arch, Descriptor, Digest, ImageIndex, ImageManifest, ImageManifestBuilder, MediaType, Os,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::archive::{canonical_json, sha256_digest, valid_digest};
use crate::error::ImageError;
use crate::store::ImageStore;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";
/// Largest manifest or config read into memory.
const MAX_SMALL: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DistributionError {
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The registry could not be reached or the connection broke: another
    /// server may do.
    #[error("registry {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// The registry answered with an error (`code` from its error body).
    #[error("registry {url} answered {status}{}: {message}", if code.is_empty() { String::new() } else { format!(" {code}") })]
    Api {
        url: String,
        status: u16,
        code: String,
        message: String,
    },
    /// Content from the registry is not what its digest or size says.
    #[error("{what} from {url}: {reason}")]
    BadContent {
        url: String,
        what: String,
        reason: String,
    },
    /// The image has no tag to push it under (it was named by id).
    #[error("image {0} has no name to push it under; tag it first (berth tag {0} NAME:TAG)")]
    NoName(String),
    #[error("no cluster server to talk to")]
    NoServers,
    /// TLS cannot work with this registry (another cluster's token, a
    /// token too short to derive the cluster CA from): no other server of
    /// the same cluster would do better.
    #[error("registry {url}: {message}")]
    Tls { url: String, message: String },
}

impl DistributionError {
    /// Whether trying another server makes sense.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
            || matches!(self, Self::Api { status, .. } if *status >= 500)
    }

    /// Whether the registry said it does not have the image.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Api { status: 404, .. })
    }
}

/// One registry: a base URL (`http://host:port`; a bare `host:port` is
/// taken as plain http, or https with [`Registry::with_tls`]) and the token
/// sent as `Authorization: Bearer`.
pub struct Registry {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Registry {
    // By hand: the token must not reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("base", &self.base)
            .finish()
    }
}

impl Registry {
    pub fn new(base_url: &str, token: Option<&str>) -> Self {
        Self::build(base_url, token, None)
    }

    /// HTTPS verified with `tls` (e.g. `berth_tls::client_config` of the
    /// cluster CA); a bare `host:port` is taken as https.
    pub fn with_tls(base_url: &str, token: Option<&str>, tls: Arc<rustls::ClientConfig>) -> Self {
        Self::build(base_url, token, Some(tls))
    }

    fn build(base_url: &str, token: Option<&str>, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        let b = base_url.trim().trim_end_matches('/');
        let base = if b.starts_with("http://") || b.starts_with("https://") {
            b.to_string()
        } else if tls.is_some() {
            format!("https://{b}")
        } else {
            format!("http://{b}")
        };
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            // No overall timeout: a layer may take minutes. A registry that
            // stops reading or sending is caught by these.
            .timeout_read(Duration::from_secs(60))
            .timeout_write(Duration::from_secs(60))
            // Registries are addressed directly; a proxy from the
            // environment must not see the token.
            .try_proxy_from_env(false);
        if let Some(tls) = tls {
            builder = builder.tls_config(tls);
        }
        let agent = builder.build();
        Self {
            base,
            token: token.filter(|t| !t.is_empty()).map(String::from),
            agent,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// A path on the registry, or a Location the registry sent (absolute
    /// or relative).
    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    fn request(&self, method: &str, url: &str) -> ureq::Request {
        let req = self.agent.request(method, url);
        match &self.token {
            Some(t) => req.set("authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    /// Sends and turns error statuses and transport failures into errors.
    fn send(
        &self,
        url: &str,
        result: Result<ureq::Response, ureq::Error>,
    ) -> Result<ureq::Response, DistributionError> {
        match result {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(status, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                let (code, message) = error_body(status, &body);
                Err(DistributionError::Api {
                    url: url.to_string(),
                    status,
                    code,
                    message,
                })
            }
            Err(ureq::Error::Transport(t)) => match berth_tls::explain_tls_error(&t) {
                Some(message) => Err(DistributionError::Tls {
                    url: url.to_string(),
                    message: message.to_string(),
                }),
                None => Err(DistributionError::Unreachable {
                    url: url.to_string(),
                    detail: t.to_string(),
                }),
            },
        }
    }

    /// Whether the registry has the blob (HEAD).
    pub fn has_blob(&self, repo: &str, digest: &str) -> Result<bool, DistributionError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        match self.send(&url, self.request("HEAD", &url).call()) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Uploads a blob from `reader` (`size` bytes): a session (POST), then
    /// the whole content in the closing PUT, as the spec's "monolithic
    /// upload in a session".
    pub fn upload_blob(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        reader: impl Read,
    ) -> Result<(), DistributionError> {
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let resp = self.send(
            &url,
            self.request("POST", &url).set("content-length", "0").call(),
        )?;
        let location = resp.header("location").map(String::from).ok_or_else(|| {
            DistributionError::BadContent {
                url: url.clone(),
                what: "upload session".into(),
                reason: "no Location header".into(),
            }
        })?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = self.url(&format!("{location}{sep}digest={digest}"));
        self.send(
            &put,
            self.request("PUT", &put)
                .set("content-type", "application/octet-stream")
                .set("content-length", &size.to_string())
                .send(reader),
        )?;
        Ok(())
    }

    /// PUTs a manifest; returns the digest the registry reports.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, DistributionError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let resp = self.send(
            &url,
            self.request("PUT", &url)
                .set("content-type", media_type)
                .send_bytes(bytes),
        )?;
        Ok(resp
            .header("docker-content-digest")
            .map(String::from)
            .unwrap_or_else(|| sha256_digest(bytes)))
    }

    /// GETs a manifest: (media type, bytes), its digest checked when the
    /// reference is one.
    pub fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<(String, Vec<u8>), DistributionError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let resp = self.send(
            &url,
            self.request("GET", &url)
                .set("accept", MANIFEST_ACCEPT)
                .call(),
        )?;
        let media_type = resp
            .content_type()
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let bytes = read_small(resp, &url, "manifest")?;
        if reference.contains(':') {
            let got = sha256_digest(&bytes);
            if got != reference {
                return Err(bad(&url, "manifest", format!("digest is {got}")));
            }
        }
        Ok((media_type, bytes))
    }

    /// GETs a small blob (a config) into memory, checking its digest.
    pub fn get_small_blob(&self, repo: &str, digest: &str) -> Result<Vec<u8>, DistributionError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self.send(&url, self.request("GET", &url).call())?;
        let bytes = read_small(resp, &url, digest)?;
        let got = sha256_digest(&bytes);
        if got != digest {
            return Err(bad(&url, digest, format!("content digest is {got}")));
        }
        Ok(bytes)
    }

    /// Streams a blob into `out`, checking size and digest; `progress` gets
    /// the bytes received so far.
    pub fn download_blob(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        out: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), DistributionError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self.send(&url, self.request("GET", &url).call())?;
        let mut reader = resp.into_reader();
        let mut file = io::BufWriter::new(File::create(out).map_err(|e| ImageError::Io {
            path: out.to_path_buf(),
            source: e,
        })?);
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| DistributionError::Unreachable {
                    url: url.clone(),
                    detail: format!("reading {digest}: {e}"),
                })?;
            if n == 0 {
                break;
            }
            got += n as u64;
            if got > size {
                return Err(bad(&url, digest, format!("longer than its {size} bytes")));
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(|e| ImageError::Io {
                path: out.to_path_buf(),
                source: e,
            })?;
            progress(got);
        }
        file.flush().map_err(|e| ImageError::Io {
            path: out.to_path_buf(),
            source: e,
        })?;
        if got != size {
            return Err(bad(&url, digest, format!("{got} bytes, expected {size}")));
        }
        let have = format!("sha256:{}", hex::encode(hasher.finalize()));
        if have != digest {
            return Err(bad(&url, digest, format!("content digest is {have}")));
        }
        Ok(())
    }
}

fn bad(url: &str, what: &str, reason: String) -> DistributionError {
    DistributionError::BadContent {
        url: url.to_string(),
        what: what.to_string(),
        reason,
    }
}

fn read_small(resp: ureq::Response, url: &str, what: &str) -> Result<Vec<u8>, DistributionError> {
    let mut bytes = Vec::new();
    resp.into_reader()
        .take(MAX_SMALL + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| DistributionError::Unreachable {
            url: url.to_string(),
            detail: format!("reading {what}: {e}"),
        })?;
    if bytes.len() as u64 > MAX_SMALL {
        return Err(bad(url, what, "larger than 16 MiB".into()));
    }
    Ok(bytes)
}

/// The spec's error body: the first error's code and message, else the
/// text, else (HEAD answers have no body) what the status means.
fn error_body(status: u16, body: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let first = &v["errors"][0];
    if let (Some(c), Some(m)) = (first["code"].as_str(), first["message"].as_str()) {
        return (c.to_string(), m.to_string());
    }
    let text: String = body.trim().chars().take(200).collect();
    if !text.is_empty() {
        return (String::new(), text);
    }
    let meaning = match status {
        401 => "unauthorized: missing or wrong token",
        403 => "denied",
        404 => "not found",
        _ => "no details",
    };
    (String::new(), meaning.to_string())
}

/// The repository a reference is pushed to: its name without a registry
/// host (`reg.local:5000/team/app` goes to `team/app` on the cluster).
pub fn repository_of(r: &ImageRef) -> String {
    match r.name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            rest.to_string()
        }
        _ => r.name.clone(),
    }
}

/// Calls `f` with each cluster server in turn until one answers (an
/// unreachable server, or one answering 5xx, moves on to the next).
///
/// With a token, the servers are reached over HTTPS trusting only the
/// cluster CA derived from the token, as servers with a token serve; an
/// address written with `http://` is used as written (a registry without
/// TLS).
pub fn with_servers<T>(
    servers: &[String],
    token: Option<&str>,
    mut f: impl FnMut(&Registry) -> Result<T, DistributionError>,
) -> Result<T, DistributionError> {
    let token = token.filter(|t| !t.is_empty());
    let mut tls: Option<Arc<rustls::ClientConfig>> = None;
    let mut last = DistributionError::NoServers;
    for server in servers {
        let registry = match token {
            Some(t) if !server.trim().starts_with("http://") => {
                let config = match &tls {
                    Some(c) => c.clone(),
                    None => {
                        let c = cluster_tls(t).map_err(|message| DistributionError::Tls {
                            url: server.clone(),
                            message,
                        })?;
                        tls = Some(c.clone());
                        c
                    }
                };
                Registry::with_tls(server, token, config)
            }
            _ => Registry::new(server, token),
        };
        match f(&registry) {
            Ok(v) => return Ok(v),
            Err(e) if e.is_unreachable() => {
                tracing::warn!(server = %server, error = %e, "registry unavailable, trying the next server");
                last = e;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// The client side of the cluster's TLS: trusts only the CA derived from
/// `token`.
fn cluster_tls(token: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    berth_tls::ClusterCa::from_token(token)
        .and_then(|ca| berth_tls::client_config(&ca, None))
        .map_err(|e| e.to_string())
}

// ---- push -----------------------------------------------------------------

/// What a push is doing, for progress displays.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PushEvent {
    /// About to look at blob `index` of `total` (layers bottom first, then
    /// the config).
    Blob {
        digest: String,
        size: u64,
        index: usize,
        total: usize,
    },
    /// The registry already has it: not sent.
    Exists {
        digest: String,
    },
    Progress {
        digest: String,
        sent: u64,
        size: u64,
    },
    Uploaded {
        digest: String,
    },
    Manifest {
        digest: String,
    },
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct PushReport {
    pub registry: String,
    pub repository: String,
    pub tag: String,
    /// Digest of the pushed manifest.
    pub digest: String,
    /// The image id (config digest).
    pub image_id: String,
    pub layers: usize,
    pub layers_uploaded: usize,
    pub layers_skipped: usize,
    pub config_uploaded: bool,
    pub bytes_uploaded: u64,
}

/// The file of a blob in the store. Layers are kept uncompressed under
/// their diff_id, configs under the image id (see the store's layout).
fn blob_file(store: &ImageStore, digest: &str) -> Result<PathBuf, ImageError> {
    if !valid_digest(digest) {
        return Err(ImageError::MissingLayer(digest.to_string()));
    }
    let hex = digest.trim_start_matches("sha256:");
    Ok(store.root().join("blobs/sha256").join(hex))
}

/// Counts bytes read and reports them every 1 MiB.
struct Counting<'a, R> {
    inner: R,
    sent: u64,
    reported: u64,
    report: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sent += n as u64;
        if self.sent - self.reported >= 1 << 20 || n == 0 {
            self.reported = self.sent;
            (self.report)(self.sent);
        }
        Ok(n)
    }
}

/// Pushes the local image `image` (a `name:tag` the store knows) to
/// `registry` as `repository_of(name):tag`: every blob the registry lacks,
/// then the manifest.
pub fn push(
    store: &ImageStore,
    image: &str,
    registry: &Registry,
    progress: &mut dyn FnMut(PushEvent),
) -> Result<PushReport, DistributionError> {
    let reference = ImageRef::parse(image).map_err(ImageError::from)?;
    let img = store.resolve(image)?;
    if !img.tags.contains(&reference) {
        return Err(DistributionError::NoName(image.to_string()));
    }
    let repo = repository_of(&reference);
    let config_path = blob_file(store, &img.id)?;
    let config_bytes = fs::read(&config_path).map_err(|e| ImageError::Io {
        path: config_path.clone(),
        source: e,
    })?;
    let mut blobs: Vec<(String, PathBuf, u64)> = Vec::new();
    for l in &img.layers {
        let path = blob_file(store, &l.diff_id)?;
        let len = fs::metadata(&path)
            .map_err(|_| ImageError::MissingLayer(l.diff_id.clone()))?
            .len();
        blobs.push((l.diff_id.clone(), path, len));
    }
    blobs.push((img.id.clone(), config_path, config_bytes.len() as u64));

    let mut report = PushReport {
        registry: registry.base_url().to_string(),
        repository: repo.clone(),
        tag: reference.tag.clone(),
        digest: String::new(),
        image_id: img.id.clone(),
        layers: img.layers.len(),
        layers_uploaded: 0,
        layers_skipped: 0,
        config_uploaded: false,
        bytes_uploaded: 0,
    };
    let total = blobs.len();
    // An image may list the same layer twice; it is sent once.
    let mut done: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (index, (digest, path, size)) in blobs.iter().enumerate() {
        let is_config = index + 1 == total;
        progress(PushEvent::Blob {
            digest: digest.clone(),
            size: *size,
            index,
            total,
        });
        if !done.insert(digest.clone()) || registry.has_blob(&repo, digest)? {
            if !is_config {
                report.layers_skipped += 1;
            }
            progress(PushEvent::Exists {
                digest: digest.clone(),
            });
            continue;
        }
        let file = File::open(path).map_err(|e| ImageError::Io {
            path: path.clone(),
            source: e,
        })?;
        let mut report_sent = |sent: u64| {
            progress(PushEvent::Progress {
                digest: digest.clone(),
                sent,
                size: *size,
            })
        };
        let reader = Counting {
            inner: BufReader::with_capacity(256 * 1024, file),
            sent: 0,
            reported: 0,
            report: &mut report_sent,
        };
        registry.upload_blob(&repo, digest, *size, reader)?;
        progress(PushEvent::Uploaded {
            digest: digest.clone(),
        });
        report.bytes_uploaded += size;
        if is_config {
            report.config_uploaded = true;
        } else {
            report.layers_uploaded += 1;
        }
    }
    let manifest = manifest_for(&img.id, config_bytes.len() as u64, &blobs[..total - 1])?;
    report.digest = registry.put_manifest(&repo, &reference.tag, OCI_MANIFEST, &manifest)?;
    progress(PushEvent::Manifest {
        digest: report.digest.clone(),
    });
    Ok(report)
}

/// The OCI manifest of a stored image, built as `save` builds it, so the
/// same image always has the same manifest digest.
fn manifest_for(
    id: &str,
    config_size: u64,
    layers: &[(String, PathBuf, u64)],
) -> Result<Vec<u8>, ImageError> {
    let digest = |s: &str| {
        Digest::from_str(s).map_err(|e| ImageError::BadConfig {
            what: s.to_string(),
            reason: e.to_string(),
        })
    };
    let mut descs = Vec::new();
    for (d, _, size) in layers {
        descs.push(Descriptor::new(MediaType::ImageLayer, *size, digest(d)?));
    }
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(
            MediaType::ImageConfig,
            config_size,
            digest(id)?,
        ))
        .layers(descs)
        .build()
        .map_err(|e| ImageError::BadConfig {
            what: "manifest".into(),
            reason: e.to_string(),
        })?;
    canonical_json(&manifest)
}

// ---- pull -----------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// Layer `index` of `total`, about to be looked at.
    Layer {
        digest: String,
        size: u64,
        index: usize,
        total: usize,
    },
    /// The store has this layer already: not downloaded.
    Exists {
        digest: String,
    },
    Progress {
        digest: String,
        received: u64,
        size: u64,
    },
    Downloaded {
        digest: String,
    },
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct PullReport {
    pub registry: String,
    /// The image id (config digest).
    pub image_id: String,
    /// The manifest digest.
    pub digest: String,
    /// The local tag given to the image.
    pub tag: String,
    pub layers: usize,
    pub layers_downloaded: usize,
    pub layers_skipped: usize,
    pub bytes_downloaded: u64,
}

/// A manifest as fetched: parsed, and its bytes (kept: they are what the
/// digest covers).
struct Fetched {
    manifest: ImageManifest,
    media_type: String,
    digest: String,
    bytes: Vec<u8>,
}

/// Follows an index to the manifest for this host (linux and this
/// architecture).
fn resolve_manifest(
    registry: &Registry,
    repo: &str,
    reference: &str,
) -> Result<Fetched, DistributionError> {
    let mut reference = reference.to_string();
    for _ in 0..3 {
        let (media_type, bytes) = registry.get_manifest(repo, &reference)?;
        let digest = sha256_digest(&bytes);
        let url = registry.url(&format!("/v2/{repo}/manifests/{reference}"));
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| bad(&url, "manifest", format!("not JSON: {e}")))?;
        let is_index = media_type == OCI_INDEX
            || media_type == DOCKER_LIST
            || (json.get("manifests").is_some() && json.get("config").is_none());
        if !is_index {
            let manifest: ImageManifest =
                serde_json::from_slice(&bytes).map_err(|e| bad(&url, "manifest", e.to_string()))?;
            let media_type = if media_type == DOCKER_MANIFEST {
                DOCKER_MANIFEST.to_string()
            } else {
                OCI_MANIFEST.to_string()
            };
            return Ok(Fetched {
                manifest,
                media_type,
                digest,
                bytes,
            });
        }
        let index: ImageIndex =
            serde_json::from_slice(&bytes).map_err(|e| bad(&url, "index", e.to_string()))?;
        let chosen = crate::archive::host_manifest(&index).ok_or_else(|| {
            bad(
                &url,
                "index",
                format!("no manifest for {}/{}", Os::default(), Arch::default()),
            )
        })?;
        reference = chosen.digest().to_string();
    }
    Err(bad(
        &registry.url(&format!("/v2/{repo}/manifests/{reference}")),
        "index",
        "indexes nested too deeply".into(),
    ))
}

/// Pulls `repo:reference` (a tag or a digest) from `registry` into the
/// store and tags it `local_tag` (by default `repo:reference` for a tag).
/// Layers the store has are not downloaded.
pub fn pull(
    store: &ImageStore,
    registry: &Registry,
    repo: &str,
    reference: &str,
    local_tag: Option<&ImageRef>,
    progress: &mut dyn FnMut(PullEvent),
) -> Result<PullReport, DistributionError> {
    let tag = match local_tag {
        Some(t) => t.clone(),
        None if !reference.contains(':') => {
            ImageRef::parse(&format!("{repo}:{reference}")).map_err(ImageError::from)?
        }
        None => ImageRef::parse(repo).map_err(ImageError::from)?,
    };
    let fetched = resolve_manifest(registry, repo, reference)?;
    let (manifest, digest) = (&fetched.manifest, fetched.digest.clone());
    let config_desc = manifest.config();
    let config_digest = config_desc.digest().to_string();
    if !valid_digest(&config_digest) {
        return Err(bad(
            registry.base_url(),
            "config",
            format!("digest {config_digest} is not sha256"),
        ));
    }
    let config_bytes = registry.get_small_blob(repo, &config_digest)?;
    let config: oci_spec::image::ImageConfiguration = serde_json::from_slice(&config_bytes)
        .map_err(|e| {
            bad(
                registry.base_url(),
                &config_digest,
                format!("bad image config: {e}"),
            )
        })?;
    let diff_ids = config.rootfs().diff_ids().clone();
    if diff_ids.len() != manifest.layers().len() {
        return Err(bad(
            registry.base_url(),
            &digest,
            format!(
                "{} layers in the manifest but {} diff_ids in the config",
                manifest.layers().len(),
                diff_ids.len()
            ),
        ));
    }
    let mut report = PullReport {
        registry: registry.base_url().to_string(),
        image_id: config_digest.clone(),
        digest: digest.clone(),
        tag: tag.to_string(),
        layers: diff_ids.len(),
        layers_downloaded: 0,
        layers_skipped: 0,
        bytes_downloaded: 0,
    };
    let known: std::collections::HashSet<String> = store
        .list()?
        .into_iter()
        .flat_map(|i| i.layers.into_iter().map(|l| l.diff_id))
        .collect();
    // The image is here already: only the tag is missing.
    if let Ok(img) = store.resolve(&config_digest) {
        if img.layers.iter().all(|l| known.contains(&l.diff_id)) {
            store.tag(&config_digest, &tag)?;
            report.layers_skipped = diff_ids.len();
            return Ok(report);
        }
    }
    let mut job = ImportJob {
        store,
        registry,
        repo,
        fetched: &fetched,
        config_bytes: &config_bytes,
        diff_ids: &diff_ids,
        tag: &tag,
    };
    let image = match job.run(&known, &mut report, progress) {
        // A layer we took for present went (a concurrent prune): fetch all.
        Err(e) if !known.is_empty() && matches!(e, DistributionError::Image(_)) => {
            tracing::warn!(error = %e, "pull: importing with local layers failed, downloading every layer");
            report.layers_downloaded = 0;
            report.layers_skipped = 0;
            report.bytes_downloaded = 0;
            job.run(&Default::default(), &mut report, progress)?
        }
        other => other?,
    };
    report.image_id = image.id;
    Ok(report)
}

struct ImportJob<'a> {
    store: &'a ImageStore,
    registry: &'a Registry,
    repo: &'a str,
    fetched: &'a Fetched,
    config_bytes: &'a [u8],
    diff_ids: &'a [String],
    tag: &'a ImageRef,
}

impl ImportJob<'_> {
    /// Lays the image out as an OCI layout in the store's tmp/ (layers in
    /// `known` as empty placeholders, which the import skips since the
    /// store has them) and imports it.
    fn run(
        &mut self,
        known: &std::collections::HashSet<String>,
        report: &mut PullReport,
        progress: &mut dyn FnMut(PullEvent),
    ) -> Result<crate::store::Image, DistributionError> {
        let (store, registry, repo) = (self.store, self.registry, self.repo);
        let manifest = &self.fetched.manifest;
        let work = store.tmp_dir()?;
        let layout = work.path();
        let blobs = layout.join("blobs/sha256");
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |e: io::Error| ImageError::Io { path, source: e }
        };
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        let total = manifest.layers().len();
        for (index, (layer, diff_id)) in manifest.layers().iter().zip(self.diff_ids).enumerate() {
            let digest = layer.digest().to_string();
            if !valid_digest(&digest) {
                return Err(bad(
                    registry.base_url(),
                    &digest,
                    "only sha256 layers are supported".into(),
                ));
            }
            let file = blobs.join(digest.trim_start_matches("sha256:"));
            progress(PullEvent::Layer {
                digest: digest.clone(),
                size: layer.size(),
                index,
                total,
            });
            if file.exists() {
                continue;
            }
            if known.contains(diff_id) {
                File::create(&file).map_err(io_err(&file))?;
                report.layers_skipped += 1;
                progress(PullEvent::Exists { digest });
                continue;
            }
            let size = layer.size();
            registry.download_blob(repo, &digest, size, &file, &mut |received| {
                progress(PullEvent::Progress {
                    digest: digest.clone(),
                    received,
                    size,
                })
            })?;
            report.layers_downloaded += 1;
            report.bytes_downloaded += size;
            progress(PullEvent::Downloaded { digest });
        }
        let manifest_bytes = &self.fetched.bytes;
        for bytes in [self.config_bytes, &manifest_bytes[..]] {
            let path = blobs.join(sha256_digest(bytes).trim_start_matches("sha256:"));
            fs::write(&path, bytes).map_err(io_err(&path))?;
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": self.fetched.media_type,
                "digest": self.fetched.digest,
                "size": manifest_bytes.len(),
            }],
        });
        let index_path = layout.join("index.json");
        fs::write(&index_path, index.to_string()).map_err(io_err(&index_path))?;
        let marker = layout.join("oci-layout");
        fs::write(&marker, r#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err(&marker))?;
        let image = store.import(layout, Some(self.tag))?;
        drop(work);
        Ok(image)
    }
}
