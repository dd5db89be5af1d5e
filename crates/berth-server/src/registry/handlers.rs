//! The distribution API's requests, dispatched from one catch-all route
//! (names have slashes, so axum's path patterns cannot split them).

use super::error::RegistryError;
use super::manifest;
use super::names::{check_digest, parse_route, valid_upload_id, Reference, Route};
use super::peers::PEER_HEADER;
use super::store::{sha256_digest, RegistryStore, StoredManifest};
use super::uploads::Uploads;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::sync::Arc;

pub(crate) async fn dispatch(
    State(store): State<Arc<RegistryStore>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match handle(&store, &method, &uri, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(method = %method, path = %uri.path(), error = %e, "registry request failed");
            e.into_response()
        }
    }
}

/// The Range header value for an upload holding `offset` bytes: the
/// inclusive range received (`0-0` for none, as the distribution registry).
pub(crate) fn range_value(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

struct Reply {
    status: StatusCode,
    headers: Vec<(&'static str, String)>,
    body: Body,
}

impl Reply {
    fn new(status: StatusCode) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::empty(),
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    fn done(self) -> Result<Response, RegistryError> {
        let mut resp = (self.status, self.body).into_response();
        let h = resp.headers_mut();
        for (name, value) in self.headers {
            // Values are built from checked names and digests; one that
            // still is not a valid header is left out rather than failing.
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        Ok(resp)
    }
}

/// Decoded query parameters.
fn query(uri: &Uri) -> Vec<(String, String)> {
    let dec = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (dec(k), dec(v))
        })
        .collect()
}

fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

async fn handle(
    store: &Arc<RegistryStore>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, RegistryError> {
    let Some(route) = parse_route(uri.path())? else {
        return Ok(StatusCode::NOT_FOUND.into_response());
    };
    let q = query(uri);
    let from_peer = headers.contains_key(PEER_HEADER);
    let head = method == Method::HEAD;
    match (route, method.clone()) {
        (Route::Base, Method::GET | Method::HEAD) => Reply::new(StatusCode::OK)
            .header("content-type", "application/json")
            .body(if head {
                Body::empty()
            } else {
                Body::from("{}")
            })
            .done(),
        (Route::Catalog, Method::GET) => catalog(store, &q),
        (Route::Tags { name }, Method::GET) => tags_list(store, &name, &q, from_peer).await,
        (Route::Manifest { name, reference }, Method::GET | Method::HEAD) => {
            get_manifest(store, &name, &reference, head, from_peer).await
        }
        (Route::Manifest { name, reference }, Method::PUT) => {
            put_manifest(store, &name, &reference, headers, body, from_peer).await
        }
        (Route::Manifest { name, reference }, Method::DELETE) => {
            delete_manifest(store, &name, &reference, from_peer).await
        }
        (Route::Blob { name, digest }, Method::GET | Method::HEAD) => {
            get_blob(store, &name, &digest, head, from_peer).await
        }
        (Route::UploadStart { name }, Method::POST) => start_upload(store, &name, &q, body).await,
        (Route::Upload { name, id }, Method::GET) => {
            let s = session(store, &name, &id)?;
            let g = Uploads::lock(&s, &name).await?;
            upload_reply(StatusCode::NO_CONTENT, &name, &g.id, g.offset)
        }
        (Route::Upload { name, id }, Method::PATCH) => {
            patch_upload(store, &name, &id, headers, body).await
        }
        (Route::Upload { name, id }, Method::PUT) => {
            finish_upload(store, &name, &id, &q, headers, body).await
        }
        (Route::Upload { name, id }, Method::DELETE) => {
            let s = session(store, &name, &id)?;
            let mut g = Uploads::lock(&s, &name).await?;
            store.uploads.end(&mut g);
            Reply::new(StatusCode::NO_CONTENT).done()
        }
        (_, m) => Err(RegistryError::Unsupported(format!(
            "{m} {} is not supported",
            uri.path()
        ))),
    }
}

// ---- blobs ---------------------------------------------------------------

/// Whether the store has the blob, asking the peers when it does not.
async fn ensure_blob(
    store: &Arc<RegistryStore>,
    name: &str,
    digest: &str,
    from_peer: bool,
) -> Result<bool, RegistryError> {
    if store.has_blob(digest) {
        return Ok(true);
    }
    if from_peer {
        return Ok(false);
    }
    store.fetch_blob(name, digest).await
}

async fn get_blob(
    store: &Arc<RegistryStore>,
    name: &str,
    digest: &str,
    head: bool,
    from_peer: bool,
) -> Result<Response, RegistryError> {
    check_digest(digest)?;
    if !ensure_blob(store, name, digest, from_peer).await? {
        return Err(RegistryError::BlobUnknown(digest.to_string()));
    }
    let path = store
        .blob_path(digest)
        .ok_or_else(|| RegistryError::DigestInvalid(digest.to_string()))?;
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RegistryError::BlobUnknown(digest.to_string()))
        }
        Err(e) => return Err(RegistryError::io(&path, e)),
    };
    let len = file
        .metadata()
        .await
        .map_err(|e| RegistryError::io(&path, e))?
        .len();
    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
            file,
            256 * 1024,
        ))
    };
    Reply::new(StatusCode::OK)
        .header("content-type", "application/octet-stream")
        .header("content-length", len.to_string())
        .header("docker-content-digest", digest)
        .header("etag", format!("\"{digest}\""))
        .body(body)
        .done()
}

// ---- uploads -------------------------------------------------------------

fn session(
    store: &Arc<RegistryStore>,
    name: &str,
    id: &str,
) -> Result<super::uploads::SessionRef, RegistryError> {
    if !valid_upload_id(id) {
        return Err(RegistryError::BlobUploadUnknown(id.to_string()));
    }
    store.uploads.get(id, name)
}

fn upload_reply(
    status: StatusCode,
    name: &str,
    id: &str,
    offset: u64,
) -> Result<Response, RegistryError> {
    Reply::new(status)
        .header("location", format!("/v2/{name}/blobs/uploads/{id}"))
        .header("range", range_value(offset))
        .header("docker-upload-uuid", id)
        .header("content-length", "0")
        .done()
}

fn blob_created(name: &str, digest: &str) -> Result<Response, RegistryError> {
    Reply::new(StatusCode::CREATED)
        .header("location", format!("/v2/{name}/blobs/{digest}"))
        .header("docker-content-digest", digest)
        .header("content-length", "0")
        .done()
}

async fn start_upload(
    store: &Arc<RegistryStore>,
    name: &str,
    q: &[(String, String)],
    body: Body,
) -> Result<Response, RegistryError> {
    // Cross-repository mount: blobs are shared by all repositories, so
    // any blob the registry has (or can fetch) mounts.
    if let Some(mount) = param(q, "mount") {
        if check_digest(mount).is_ok() && ensure_blob(store, name, mount, false).await? {
            return blob_created(name, mount);
        }
    }
    let cfg = store.config.clone();
    let s = store
        .uploads
        .start(name, cfg.max_sessions, cfg.session_ttl)
        .await?;
    let mut g = Uploads::lock(&s, name).await?;
    match param(q, "digest") {
        // Monolithic upload: the whole blob in the POST.
        Some(digest) => {
            let digest = digest.to_string();
            if let Err(e) = check_digest(&digest) {
                store.uploads.end(&mut g);
                return Err(e);
            }
            let res = async {
                store
                    .uploads
                    .append(&mut g, body, cfg.max_upload_bytes)
                    .await?;
                store.uploads.finish(store, &mut g, &digest).await
            }
            .await;
            store.uploads.end(&mut g);
            res?;
            blob_created(name, &digest)
        }
        None => upload_reply(StatusCode::ACCEPTED, name, &g.id, g.offset),
    }
}

/// The start of a `Content-Range: START-END` header (also `bytes START-END`).
fn range_start(headers: &HeaderMap) -> Result<Option<u64>, RegistryError> {
    let Some(v) = headers.get("content-range") else {
        return Ok(None);
    };
    let bad = || RegistryError::BlobUploadInvalid(format!("bad Content-Range {v:?}"));
    let s = v.to_str().map_err(|_| bad())?.trim();
    let s = s
        .strip_prefix("bytes=")
        .or_else(|| s.strip_prefix("bytes "))
        .unwrap_or(s);
    let (start, _end) = s.split_once('-').ok_or_else(bad)?;
    start.trim().parse().map(Some).map_err(|_| bad())
}

async fn patch_upload(
    store: &Arc<RegistryStore>,
    name: &str,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, RegistryError> {
    let s = session(store, name, id)?;
    let mut g = Uploads::lock(&s, name).await?;
    if let Some(start) = range_start(headers)? {
        if start != g.offset {
            return Err(RegistryError::RangeInvalid {
                id: g.id.clone(),
                offset: g.offset,
                start,
            });
        }
    }
    let max = store.config.max_upload_bytes;
    store.uploads.append(&mut g, body, max).await?;
    upload_reply(StatusCode::ACCEPTED, name, &g.id, g.offset)
}

async fn finish_upload(
    store: &Arc<RegistryStore>,
    name: &str,
    id: &str,
    q: &[(String, String)],
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, RegistryError> {
    let digest = param(q, "digest")
        .ok_or_else(|| {
            RegistryError::DigestInvalid("the digest query parameter is missing".into())
        })?
        .to_string();
    check_digest(&digest)?;
    let s = session(store, name, id)?;
    let mut g = Uploads::lock(&s, name).await?;
    if let Some(start) = range_start(headers)? {
        if start != g.offset {
            return Err(RegistryError::RangeInvalid {
                id: g.id.clone(),
                offset: g.offset,
                start,
            });
        }
    }
    let max = store.config.max_upload_bytes;
    store.uploads.append(&mut g, body, max).await?;
    store.uploads.finish(store, &mut g, &digest).await?;
    blob_created(name, &digest)
}

// ---- manifests -----------------------------------------------------------

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(RegistryError::io("<worker>", std::io::Error::other(e))))
}

async fn find_manifest(
    store: &Arc<RegistryStore>,
    name: &str,
    reference: &Reference,
    from_peer: bool,
) -> Result<Option<StoredManifest>, RegistryError> {
    let (st, n, r) = (store.clone(), name.to_string(), reference.clone());
    if let Some(m) = blocking(move || st.get_manifest(&n, &r)).await? {
        return Ok(Some(m));
    }
    if from_peer {
        return Ok(None);
    }
    store.fetch_manifest(name, reference).await
}

async fn get_manifest(
    store: &Arc<RegistryStore>,
    name: &str,
    reference: &str,
    head: bool,
    from_peer: bool,
) -> Result<Response, RegistryError> {
    let reference = Reference::parse(reference)?;
    let m = find_manifest(store, name, &reference, from_peer)
        .await?
        .ok_or_else(|| RegistryError::ManifestUnknown(format!("{name}:{reference}")))?;
    let len = m.bytes.len();
    Reply::new(StatusCode::OK)
        .header("content-type", m.media_type)
        .header("content-length", len.to_string())
        .header("docker-content-digest", m.digest.clone())
        .header("etag", format!("\"{}\"", m.digest))
        .body(if head {
            Body::empty()
        } else {
            Body::from(m.bytes)
        })
        .done()
}

/// Reads a body of at most `max` bytes.
async fn read_limited(body: Body, max: usize) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            RegistryError::ManifestInvalid(format!("reading the request body: {e}"))
        })?;
        if out.len() + chunk.len() > max {
            return Err(RegistryError::TooLarge(format!(
                "manifests are limited to {max} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

async fn put_manifest(
    store: &Arc<RegistryStore>,
    name: &str,
    reference: &str,
    headers: &HeaderMap,
    body: Body,
    from_peer: bool,
) -> Result<Response, RegistryError> {
    let reference = Reference::parse(reference)?;
    let bytes = read_limited(body, store.config.max_manifest_bytes).await?;
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
    let media_type = manifest::media_type(content_type, &bytes)?;
    let digest = sha256_digest(&bytes);
    if let Reference::Digest(d) = &reference {
        if *d != digest {
            return Err(RegistryError::DigestInvalid(format!(
                "the manifest has digest {digest}, pushed as {d}"
            )));
        }
    }
    // A peer forwarding a push already checked; the blobs come on demand.
    if !from_peer {
        let index = manifest::is_index(&media_type);
        for d in manifest::references(&media_type, &bytes)? {
            let present = if index {
                find_manifest(store, name, &Reference::Digest(d.clone()), false)
                    .await?
                    .is_some()
                    || store.has_blob(&d)
            } else {
                ensure_blob(store, name, &d, false).await?
            };
            if !present {
                return Err(RegistryError::ManifestBlobUnknown(d));
            }
        }
    }
    let (st, n, r, mt, b) = (
        store.clone(),
        name.to_string(),
        reference.clone(),
        media_type.clone(),
        bytes.clone(),
    );
    blocking(move || st.put_manifest(&n, &r, &mt, &b)).await?;
    tracing::info!(repository = name, reference = %reference, digest, "manifest pushed");
    if !from_peer {
        store.forward_manifest(name, &reference, &media_type, bytes);
    }
    Reply::new(StatusCode::CREATED)
        .header("location", format!("/v2/{name}/manifests/{digest}"))
        .header("docker-content-digest", digest)
        .header("content-length", "0")
        .done()
}

async fn delete_manifest(
    store: &Arc<RegistryStore>,
    name: &str,
    reference: &str,
    from_peer: bool,
) -> Result<Response, RegistryError> {
    let reference = Reference::parse(reference)?;
    let (st, n, r) = (store.clone(), name.to_string(), reference.clone());
    let found = blocking(move || st.delete_manifest(&n, &r)).await?;
    if !from_peer {
        store.forward_delete(name, &reference);
    }
    if !found {
        return Err(RegistryError::ManifestUnknown(format!(
            "{name}:{reference}"
        )));
    }
    Reply::new(StatusCode::ACCEPTED).done()
}

// ---- listings ------------------------------------------------------------

/// Applies `n` and `last` to a sorted list; returns the page and whether
/// more follow.
fn paginate(items: Vec<String>, q: &[(String, String)]) -> (Vec<String>, bool) {
    let last = param(q, "last");
    let mut items: Vec<String> = match last {
        Some(l) => items.into_iter().filter(|t| t.as_str() > l).collect(),
        None => items,
    };
    match param(q, "n").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) if items.len() > n => {
            items.truncate(n);
            (items, true)
        }
        _ => (items, false),
    }
}

fn json_page(
    base: &str,
    q: &[(String, String)],
    page: Vec<String>,
    more: bool,
    value: serde_json::Value,
) -> Result<Response, RegistryError> {
    let mut reply = Reply::new(StatusCode::OK).header("content-type", "application/json");
    if more {
        if let (Some(n), Some(last)) = (param(q, "n"), page.last()) {
            reply = reply.header("link", format!("<{base}?n={n}&last={last}>; rel=\"next\""));
        }
    }
    reply.body(Body::from(value.to_string())).done()
}

fn catalog(store: &Arc<RegistryStore>, q: &[(String, String)]) -> Result<Response, RegistryError> {
    let (page, more) = paginate(store.repositories()?, q);
    let value = serde_json::json!({ "repositories": page });
    json_page("/v2/_catalog", q, page, more, value)
}

async fn tags_list(
    store: &Arc<RegistryStore>,
    name: &str,
    q: &[(String, String)],
    from_peer: bool,
) -> Result<Response, RegistryError> {
    let tags = match store.tags(name)? {
        Some(t) => t,
        None if !from_peer => store
            .fetch_tags(name)
            .await
            .ok_or_else(|| RegistryError::NameUnknown(name.to_string()))?,
        None => return Err(RegistryError::NameUnknown(name.to_string())),
    };
    let (page, more) = paginate(tags, q);
    let value = serde_json::json!({ "name": name, "tags": page });
    json_page(&format!("/v2/{name}/tags/list"), q, page, more, value)
}
