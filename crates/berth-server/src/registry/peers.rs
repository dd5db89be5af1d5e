//! Fetching from the other servers. Blobs and manifests are not in the
//! Raft log, so a server that lacks one asks its peers before answering
//! "unknown": a push to any server can be pulled from every server.
//! Requests between servers carry [`PEER_HEADER`]; a server answers them
//! from its own files only, so two servers never ask each other in a loop.
//! Manifest pushes and deletes are also forwarded to the peers (best
//! effort) so that a moved tag does not stay stale on the other servers.

use super::error::RegistryError;
use super::names::{check_digest, Reference};
use super::store::{sha256_digest, RegistryStore, StoredManifest};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Marks a request from another server: answer from local files only.
pub const PEER_HEADER: &str = "x-berth-registry-peer";

/// Every manifest type the registry stores, for `Accept`.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

pub(crate) struct Peers {
    list: Box<dyn Fn() -> Vec<String> + Send + Sync>,
    token: Option<String>,
    http: reqwest::Client,
    /// For a bare `host:port`: `https` when the servers speak TLS.
    scheme: &'static str,
}

fn base_url(scheme: &str, addr: &str) -> String {
    let a = addr.trim().trim_end_matches('/');
    if a.starts_with("http://") || a.starts_with("https://") {
        a.to_string()
    } else {
        format!("{scheme}://{a}")
    }
}

impl Peers {
    /// `tls`: the servers serve HTTPS under the cluster CA (a token is
    /// configured); peers are then called with this client configuration.
    pub(crate) fn new(
        list: Box<dyn Fn() -> Vec<String> + Send + Sync>,
        token: Option<String>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // Peers are addressed directly: no proxy from the environment.
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            // No overall timeout: a layer may take minutes; a peer that
            // stops sending is caught by the read timeout.
            .read_timeout(Duration::from_secs(30));
        let scheme = match tls {
            Some(tls) => {
                b = b.use_preconfigured_tls((*tls).clone());
                "https"
            }
            None => "http",
        };
        let http = b.build().unwrap_or_default();
        Self {
            list,
            token,
            http,
            scheme,
        }
    }

    fn request(&self, method: reqwest::Method, addr: &str, path: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{path}", base_url(self.scheme, addr)))
            .header(PEER_HEADER, "1");
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req
    }

    fn addresses(&self) -> Vec<String> {
        (self.list)()
    }
}

impl RegistryStore {
    /// Fetches blob `digest` from the first peer that has it. Returns
    /// whether the store has it now.
    pub(crate) async fn fetch_blob(&self, name: &str, digest: &str) -> Result<bool, RegistryError> {
        let Some(peers) = &self.peers else {
            return Ok(false);
        };
        check_digest(digest)?;
        let lock = {
            let mut map = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(digest.to_string()).or_default().clone()
        };
        let guard = lock.lock().await;
        let result = async {
            if self.has_blob(digest) {
                return Ok(true);
            }
            for addr in peers.addresses() {
                match self.fetch_blob_from(peers, &addr, name, digest).await {
                    Ok(true) => {
                        tracing::info!(peer = %addr, digest, "blob fetched from a peer");
                        return Ok(true);
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(peer = %addr, digest, error = %e, "fetching a blob from a peer"),
                }
            }
            Ok(false)
        }
        .await;
        drop(guard);
        let mut map = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::strong_count(&lock) <= 2 {
            map.remove(digest);
        }
        result
    }

    async fn fetch_blob_from(
        &self,
        peers: &Peers,
        addr: &str,
        name: &str,
        digest: &str,
    ) -> Result<bool, String> {
        let resp = peers
            .request(
                reqwest::Method::GET,
                addr,
                &format!("/v2/{name}/blobs/{digest}"),
            )
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        let tmp = self.tmp_path("fetch");
        let res = self.download(resp, &tmp, digest).await;
        if res.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        res.map(|()| true)
    }

    /// Streams a peer's answer into `tmp`, checks its digest and commits it.
    async fn download(
        &self,
        mut resp: reqwest::Response,
        tmp: &std::path::Path,
        digest: &str,
    ) -> Result<(), String> {
        use sha2::Digest as _;
        let mut file = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut hasher = sha2::Sha256::new();
        let mut len = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            len += chunk.len() as u64;
            if len > self.config.max_upload_bytes {
                return Err(format!(
                    "blob is larger than {} bytes",
                    self.config.max_upload_bytes
                ));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
        }
        file.sync_all()
            .await
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if got != digest {
            return Err(format!("content has digest {got}"));
        }
        self.commit_blob(tmp, digest).map_err(|e| e.to_string())
    }

    /// Fetches a manifest from the first peer that has it, stores it (and
    /// the tag, for a tag reference) and returns it.
    pub(crate) async fn fetch_manifest(
        &self,
        name: &str,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>, RegistryError> {
        let Some(peers) = &self.peers else {
            return Ok(None);
        };
        for addr in peers.addresses() {
            match self
                .fetch_manifest_from(peers, &addr, name, reference)
                .await
            {
                Ok(Some((media_type, bytes))) => {
                    tracing::info!(peer = %addr, repository = name, reference = %reference, "manifest fetched from a peer");
                    let digest = self.put_manifest(name, reference, &media_type, &bytes)?;
                    return Ok(Some(StoredManifest {
                        digest,
                        media_type,
                        bytes,
                    }));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(peer = %addr, repository = name, reference = %reference, error = %e, "fetching a manifest from a peer")
                }
            }
        }
        Ok(None)
    }

    async fn fetch_manifest_from(
        &self,
        peers: &Peers,
        addr: &str,
        name: &str,
        reference: &Reference,
    ) -> Result<Option<(String, Vec<u8>)>, String> {
        let mut resp = peers
            .request(
                reqwest::Method::GET,
                addr,
                &format!("/v2/{name}/manifests/{reference}"),
            )
            .header("accept", MANIFEST_ACCEPT)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        let media_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > self.config.max_manifest_bytes {
                return Err("manifest too large".into());
            }
        }
        if let Reference::Digest(d) = reference {
            let got = sha256_digest(&bytes);
            if &got != d {
                return Err(format!("manifest has digest {got}"));
            }
        }
        let media_type =
            super::manifest::media_type(Some(&media_type), &bytes).map_err(|e| e.to_string())?;
        Ok(Some((media_type, bytes)))
    }

    /// The tags of a repository this server does not know, from the first
    /// peer that knows it.
    pub(crate) async fn fetch_tags(&self, name: &str) -> Option<Vec<String>> {
        let peers = self.peers.as_ref()?;
        for addr in peers.addresses() {
            let resp = peers
                .request(
                    reqwest::Method::GET,
                    &addr,
                    &format!("/v2/{name}/tags/list"),
                )
                .send()
                .await;
            let Ok(resp) = resp else { continue };
            if !resp.status().is_success() {
                continue;
            }
            #[derive(serde::Deserialize)]
            struct TagList {
                #[serde(default)]
                tags: Option<Vec<String>>,
            }
            if let Ok(list) = resp.json::<TagList>().await {
                return Some(list.tags.unwrap_or_default());
            }
        }
        None
    }

    /// Sends a pushed manifest to every peer in the background.
    pub(crate) fn forward_manifest(
        self: &Arc<Self>,
        name: &str,
        reference: &Reference,
        media_type: &str,
        bytes: Vec<u8>,
    ) {
        let Some(peers) = &self.peers else { return };
        let path = format!("/v2/{name}/manifests/{reference}");
        let requests: Vec<_> = peers
            .addresses()
            .into_iter()
            .map(|addr| {
                let req = peers
                    .request(reqwest::Method::PUT, &addr, &path)
                    .header("content-type", media_type)
                    .body(bytes.clone());
                (addr, req)
            })
            .collect();
        spawn_all(requests, "forwarding a manifest to a peer");
    }

    /// Sends a manifest or tag deletion to every peer in the background.
    pub(crate) fn forward_delete(self: &Arc<Self>, name: &str, reference: &Reference) {
        let Some(peers) = &self.peers else { return };
        let path = format!("/v2/{name}/manifests/{reference}");
        let requests: Vec<_> = peers
            .addresses()
            .into_iter()
            .map(|addr| {
                let req = peers.request(reqwest::Method::DELETE, &addr, &path);
                (addr, req)
            })
            .collect();
        spawn_all(requests, "forwarding a manifest deletion to a peer");
    }
}

fn spawn_all(requests: Vec<(String, reqwest::RequestBuilder)>, what: &'static str) {
    for (addr, req) in requests {
        tokio::spawn(async move {
            match req.timeout(Duration::from_secs(10)).send().await {
                Ok(r)
                    if r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND => {}
                Ok(r) => tracing::warn!(peer = %addr, status = %r.status(), "{what}"),
                Err(e) => tracing::warn!(peer = %addr, error = %e, "{what}"),
            }
        });
    }
}
