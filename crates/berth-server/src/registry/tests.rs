//! The registry over real HTTP on loopback, in process.

use super::*;
use reqwest::{Method, StatusCode};
use sha2::Digest as _;
use std::time::Duration;

struct Served {
    base: String,
    addr: String,
    store: Arc<RegistryStore>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_with(
    config: RegistryConfig,
    token: Option<&str>,
    peers: Option<(Vec<String>, Option<&str>)>,
) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let mut store = RegistryStore::open(&dir.path().join("registry"), config).unwrap();
    if let Some((list, t)) = peers {
        store = store.with_peers(move || list.clone(), t.map(String::from));
    }
    let store = Arc::new(store);
    let app = auth::require_token(routes(store.clone()), token.map(String::from));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Served {
        base: format!("http://{addr}"),
        addr,
        store,
        _dir: dir,
        task,
    }
}

async fn serve() -> Served {
    serve_with(RegistryConfig::default(), None, None).await
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

impl Served {
    async fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        http().request(method, format!("{}{path}", self.base))
    }

    async fn upload(&self, name: &str, data: &[u8]) -> String {
        let d = digest(data);
        let r = self
            .req(
                Method::POST,
                &format!("/v2/{name}/blobs/uploads/?digest={d}"),
            )
            .await
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
        d
    }

    /// Pushes a config and a layer and a manifest tagged `tag`; returns
    /// (manifest bytes, manifest digest, layer digest).
    async fn push_image(&self, name: &str, tag: &str, layer: &[u8]) -> (Vec<u8>, String, String) {
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = self.upload(name, config).await;
        let l = self.upload(name, layer).await;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l, "size": layer.len()}],
        }))
        .unwrap();
        let r = self
            .req(Method::PUT, &format!("/v2/{name}/manifests/{tag}"))
            .await
            .header("content-type", manifest::OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
        let md = digest(&manifest);
        assert_eq!(r.headers()["docker-content-digest"], md.as_str());
        (manifest, md, l)
    }
}

async fn error_code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.unwrap();
    v["errors"][0]["code"].as_str().unwrap_or("").to_string()
}

fn blob_count(s: &Served) -> usize {
    std::fs::read_dir(s.store.root().join("blobs/sha256"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn base_endpoint_announces_the_api() {
    let s = serve().await;
    for path in ["/v2/", "/v2"] {
        let r = s.req(Method::GET, path).await.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()["docker-distribution-api-version"],
            "registry/2.0"
        );
    }
    let r = s
        .req(Method::GET, "/v2/x/unknown")
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn monolithic_upload_then_head_and_get() {
    let s = serve().await;
    let data = b"hello layer".to_vec();
    let d = s.upload("team/app", &data).await;
    let r = s
        .req(Method::HEAD, &format!("/v2/team/app/blobs/{d}"))
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-length"],
        data.len().to_string().as_str()
    );
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    let r = s
        .req(Method::GET, &format!("/v2/team/app/blobs/{d}"))
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().to_vec(), data);
    let missing = digest(b"nothing");
    let r = s
        .req(Method::GET, &format!("/v2/team/app/blobs/{missing}"))
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    let r = s
        .req(Method::HEAD, &format!("/v2/team/app/blobs/{missing}"))
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = s
        .req(Method::GET, "/v2/team/app/blobs/sha256:nothex")
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
}

#[tokio::test]
async fn chunked_upload_with_ranges() {
    let s = serve().await;
    let r = s
        .req(Method::POST, "/v2/app/blobs/uploads/")
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with("/v2/app/blobs/uploads/"), "{location}");
    let uuid = r.headers()["docker-upload-uuid"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(location.ends_with(&uuid));
    assert_eq!(r.headers()["range"], "0-0");

    let r = s
        .req(Method::PATCH, &location)
        .await
        .header("content-range", "0-4")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["range"], "0-4");
    // A chunk that does not continue where the upload ends.
    let r = s
        .req(Method::PATCH, &location)
        .await
        .header("content-range", "3-9")
        .body("xxxxxxx")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["range"], "0-4");
    let r = s.req(Method::GET, &location).await.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"], "0-4");
    // A chunk without Content-Range appends (docker's streamed PATCH).
    let r = s
        .req(Method::PATCH, &location)
        .await
        .body(" world")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["range"], "0-10");
    let d = digest(b"hello world!");
    let r = s
        .req(Method::PUT, &format!("{location}?digest={d}"))
        .await
        .body("!")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.headers()["location"],
        format!("/v2/app/blobs/{d}").as_str()
    );
    let got = s
        .req(Method::GET, &format!("/v2/app/blobs/{d}"))
        .await
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], b"hello world!");
    // The session is gone once finished, and its bytes given back.
    let r = s.req(Method::GET, &location).await.send().await.unwrap();
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(s.store.upload_bytes(), 0);
    // A session can be cancelled.
    let r = s
        .req(Method::POST, "/v2/app/blobs/uploads/")
        .await
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let r = s.req(Method::DELETE, &location).await.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = s
        .req(Method::PATCH, &location)
        .await
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Another repository cannot use the session.
    let r = s
        .req(Method::POST, "/v2/app/blobs/uploads/")
        .await
        .send()
        .await
        .unwrap();
    let uuid = r.headers()["docker-upload-uuid"]
        .to_str()
        .unwrap()
        .to_string();
    let r = s
        .req(Method::PATCH, &format!("/v2/other/blobs/uploads/{uuid}"))
        .await
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn digest_mismatch_is_rejected_and_nothing_stored() {
    let s = serve().await;
    let wrong = digest(b"something else");
    let r = s
        .req(
            Method::POST,
            &format!("/v2/app/blobs/uploads/?digest={wrong}"),
        )
        .await
        .body("actual content")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert!(!s.store.has_blob(&wrong));
    assert!(!s.store.has_blob(&digest(b"actual content")));

    let r = s
        .req(Method::POST, "/v2/app/blobs/uploads/")
        .await
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let r = s
        .req(Method::PUT, &format!("{location}?digest={wrong}"))
        .await
        .body("actual content")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = s.req(Method::GET, &location).await.send().await.unwrap();
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(blob_count(&s), 0);
    assert_eq!(s.store.upload_bytes(), 0);
    let upload_files = std::fs::read_dir(s.store.root().join("uploads"))
        .unwrap()
        .count();
    assert_eq!(upload_files, 0, "upload data is deleted");
}

#[tokio::test]
async fn manifests_by_tag_and_digest_tags_list_and_delete() {
    let s = serve().await;
    let (manifest, md, _) = s.push_image("team/app", "v1", b"layer one").await;
    for reference in ["v1", md.as_str()] {
        let r = s
            .req(Method::GET, &format!("/v2/team/app/manifests/{reference}"))
            .await
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], manifest::OCI_MANIFEST);
        assert_eq!(r.headers()["docker-content-digest"], md.as_str());
        assert_eq!(r.bytes().await.unwrap().to_vec(), manifest);
        let r = s
            .req(Method::HEAD, &format!("/v2/team/app/manifests/{reference}"))
            .await
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()["content-length"],
            manifest.len().to_string().as_str()
        );
    }
    s.push_image("team/app", "v2", b"layer two").await;
    let r = s
        .req(Method::GET, "/v2/team/app/tags/list")
        .await
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"name": "team/app", "tags": ["v1", "v2"]})
    );
    let r = s
        .req(Method::GET, "/v2/team/app/tags/list?n=1")
        .await
        .send()
        .await
        .unwrap();
    assert!(r.headers()["link"].to_str().unwrap().contains("last=v1"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["v1"]));
    let r = s
        .req(Method::GET, "/v2/_catalog")
        .await
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["team/app"]));

    // Unknowns, each with its code.
    let r = s
        .req(Method::GET, "/v2/team/app/manifests/nope")
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = s
        .req(Method::GET, "/v2/nobody/tags/list")
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
    let r = s
        .req(Method::GET, "/v2/Bad/tags/list")
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "NAME_INVALID");

    // A manifest whose blobs were never pushed.
    let missing = digest(b"never pushed");
    let bad = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": manifest::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": missing, "size": 1},
        "layers": []
    }))
    .unwrap();
    let r = s
        .req(Method::PUT, "/v2/team/app/manifests/bad")
        .await
        .header("content-type", manifest::OCI_MANIFEST)
        .body(bad)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    // Pushed by a digest that is not its own.
    let r = s
        .req(Method::PUT, &format!("/v2/team/app/manifests/{missing}"))
        .await
        .header("content-type", manifest::OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = s
        .req(Method::PUT, "/v2/team/app/manifests/junk")
        .await
        .header("content-type", manifest::OCI_MANIFEST)
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");

    // An index over the manifest, pushed by digest.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": manifest::OCI_INDEX,
        "manifests": [{"mediaType": manifest::OCI_MANIFEST, "digest": md, "size": manifest.len(),
                       "platform": {"os": "linux", "architecture": "amd64"}}]
    }))
    .unwrap();
    let r = s
        .req(Method::PUT, "/v2/team/app/manifests/multi")
        .await
        .header("content-type", manifest::OCI_INDEX)
        .body(index)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s
        .req(Method::GET, "/v2/team/app/manifests/multi")
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], manifest::OCI_INDEX);

    // Delete by digest removes the tags pointing at it too.
    let r = s
        .req(Method::DELETE, &format!("/v2/team/app/manifests/{md}"))
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = s
        .req(Method::GET, "/v2/team/app/manifests/v1")
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = s
        .req(Method::DELETE, "/v2/team/app/manifests/v2")
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let v: serde_json::Value = s
        .req(Method::GET, "/v2/team/app/tags/list")
        .await
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tags"], serde_json::json!(["multi"]));
}

#[tokio::test]
async fn layers_are_stored_once_across_repositories() {
    let s = serve().await;
    let (_, _, layer) = s.push_image("one", "1", b"shared layer").await;
    let before = blob_count(&s);
    // A client HEADs before uploading: the layer is there for any repository.
    let r = s
        .req(Method::HEAD, &format!("/v2/two/blobs/{layer}"))
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .req(
            Method::POST,
            &format!("/v2/two/blobs/uploads/?mount={layer}&from=one"),
        )
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["docker-content-digest"], layer.as_str());
    // Uploading it again anyway leaves one copy.
    s.upload("three", b"shared layer").await;
    s.push_image("two", "1", b"shared layer").await;
    assert_eq!(
        blob_count(&s),
        before,
        "same config and layer: no new blobs"
    );
    // A mount of an unknown blob starts an ordinary upload.
    let r = s
        .req(
            Method::POST,
            &format!("/v2/two/blobs/uploads/?mount={}&from=one", digest(b"x")),
        )
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn uploads_are_bounded_and_abandoned_ones_reaped() {
    let config = RegistryConfig {
        max_upload_bytes: 1000,
        max_sessions: 2,
        session_ttl: Duration::from_millis(300),
        ..RegistryConfig::default()
    };
    let s = serve_with(config, None, None).await;
    let big = vec![7u8; 2000];
    let r = s
        .req(
            Method::POST,
            &format!("/v2/app/blobs/uploads/?digest={}", digest(&big)),
        )
        .await
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "SIZE_INVALID");
    assert_eq!(s.store.upload_bytes(), 0);

    let mut locations = Vec::new();
    for _ in 0..2 {
        let r = s
            .req(Method::POST, "/v2/app/blobs/uploads/")
            .await
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        locations.push(r.headers()["location"].to_str().unwrap().to_string());
    }
    s.req(Method::PATCH, &locations[0])
        .await
        .body(vec![1u8; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(s.store.upload_bytes(), 100);
    let r = s
        .req(Method::POST, "/v2/app/blobs/uploads/")
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Left alone, both sessions are deleted by the reaper.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = s
        .req(Method::GET, &locations[0])
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(s.store.upload_bytes(), 0);
    let files = std::fs::read_dir(s.store.root().join("uploads"))
        .unwrap()
        .count();
    assert_eq!(files, 0);
}

#[tokio::test]
async fn token_as_bearer_or_basic_password() {
    use base64::Engine as _;
    let s = serve_with(RegistryConfig::default(), Some("s3cret"), None).await;
    let r = s.req(Method::GET, "/v2/").await.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"berth\"");
    assert_eq!(error_code(r).await, "UNAUTHORIZED");
    let r = s
        .req(Method::GET, "/v2/")
        .await
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let basic = base64::engine::general_purpose::STANDARD.encode("berth:s3cret");
    let r = s
        .req(Method::GET, "/v2/")
        .await
        .header("authorization", format!("Basic {basic}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_server_fetches_what_it_lacks_from_its_peers() {
    let a = serve_with(RegistryConfig::default(), Some("tok"), None).await;
    let b = serve_with(
        RegistryConfig::default(),
        None,
        Some((vec![a.addr.clone()], Some("tok"))),
    )
    .await;
    // Pushed to A (with its token), pulled from B.
    let a_authed = |m: Method, p: &str| {
        http()
            .request(m, format!("{}{p}", a.base))
            .bearer_auth("tok")
    };
    let layer = b"layer only on a".to_vec();
    let ld = digest(&layer);
    let r = a_authed(
        Method::POST,
        &format!("/v2/lib/app/blobs/uploads/?digest={ld}"),
    )
    .body(layer.clone())
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let config = br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let cd = digest(&config);
    a_authed(
        Method::POST,
        &format!("/v2/lib/app/blobs/uploads/?digest={cd}"),
    )
    .body(config.clone())
    .send()
    .await
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": manifest::DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar", "digest": ld, "size": layer.len()}]
    }))
    .unwrap();
    let r = a_authed(Method::PUT, "/v2/lib/app/manifests/1.0")
        .header("content-type", manifest::DOCKER_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    assert!(!b.store.has_blob(&ld));
    let r = b
        .req(Method::GET, "/v2/lib/app/manifests/1.0")
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], manifest::DOCKER_MANIFEST);
    assert_eq!(r.bytes().await.unwrap().to_vec(), manifest);
    let r = b
        .req(Method::HEAD, &format!("/v2/lib/app/blobs/{ld}"))
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(b.store.has_blob(&ld), "the layer was copied to b");
    let got = b
        .req(Method::GET, &format!("/v2/lib/app/blobs/{cd}"))
        .await
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.to_vec(), config);
    // A peer request is answered from local files only (no loops).
    let nothing = digest(b"nowhere");
    let r = b
        .req(Method::GET, &format!("/v2/lib/app/blobs/{nothing}"))
        .await
        .header(PEER_HEADER, "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Unknown everywhere: still a clean 404.
    let r = b
        .req(Method::GET, "/v2/lib/app/manifests/9.9")
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");

    // A push to b is forwarded to its peer a (in the background).
    let (_, md2, _) = b.push_image("lib/other", "x", b"layer on b").await;
    let mut forwarded = false;
    for _ in 0..50 {
        if let Ok(Some(m)) = a
            .store
            .get_manifest("lib/other", &names::Reference::Tag("x".into()))
        {
            assert_eq!(m.digest, md2);
            forwarded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(forwarded, "manifest forwarded to the peer");
}

#[tokio::test]
async fn concurrent_peer_fetches_download_once() {
    let a = serve().await;
    let b = serve_with(
        RegistryConfig::default(),
        None,
        Some((vec![a.addr.clone()], None)),
    )
    .await;
    let data = vec![3u8; 1 << 20];
    let d = a.upload("app", &data).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = format!("{}/v2/app/blobs/{d}", b.base);
        tasks.push(tokio::spawn(async move {
            http()
                .get(url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .len()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), data.len());
    }
    assert_eq!(blob_count(&b), 1);
    assert!(b.store.fetching.lock().unwrap().is_empty());
}

/// Writes an OCI layout with one image (a config and one layer) tagged `tag`.
fn oci_layout(dir: &std::path::Path, tag: &str, layer: &[u8]) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = digest(bytes);
        std::fs::write(blobs.join(&d[7..]), bytes).unwrap();
        d
    };
    let ld = put(layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [ld]}
    }))
    .unwrap();
    let cd = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": manifest::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}]
    }))
    .unwrap();
    let md = put(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": manifest::OCI_MANIFEST, "digest": md, "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": tag}}]
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    md
}

/// A tar with one file: skopeo looks into layers when it converts.
fn tiny_tar(content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..8].copy_from_slice(b"hello.tx");
    header[100..107].copy_from_slice(b"0000644");
    header[108..115].copy_from_slice(b"0000000");
    header[116..123].copy_from_slice(b"0000000");
    let size = format!("{:011o}", content.len());
    header[124..135].copy_from_slice(size.as_bytes());
    header[136..147].copy_from_slice(b"00000000000");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| *b as u32).sum();
    header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

fn skopeo(args: &[&str]) -> std::process::Output {
    std::process::Command::new("skopeo")
        .args(args)
        .output()
        .expect("running skopeo")
}

/// skopeo (containers/image) pushes to and pulls from the registry, with
/// the token as Basic password. Skipped where
/// skopeo is not installed (Debian: apt-get install skopeo).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_and_pulls() {
    if std::process::Command::new("skopeo")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skopeo not installed; skipping");
        return;
    }
    let s = serve_with(RegistryConfig::default(), Some("tok"), None).await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let md = oci_layout(&src, "v1", &tiny_tar(b"hello from skopeo\n"));
    let src_ref = format!("oci:{}:v1", src.display());
    let dest = format!("docker://{}/test/busybox:1", s.addr);
    let ok = |o: std::process::Output, what: &str| {
        assert!(
            o.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    };
    let (src_ref2, dest2) = (src_ref.clone(), dest.clone());
    let o = tokio::task::spawn_blocking(move || {
        skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "berth:tok",
            &src_ref2,
            &dest2,
        ])
    })
    .await
    .unwrap();
    ok(o, "skopeo copy to the registry with Basic creds");
    let m = s
        .store
        .get_manifest("test/busybox", &names::Reference::Tag("1".into()))
        .unwrap()
        .expect("manifest pushed");
    // skopeo compresses the uncompressed layer on the way, so the
    // manifest is a new one; it comes back byte for byte below.
    let pushed: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
    assert_eq!(pushed["layers"].as_array().unwrap().len(), 1, "{pushed}");
    let _ = md;

    let blobs_before = blob_count(&s);
    // Again under another tag (any user name will do): every blob is
    // already there. (`--dest-registry-token` is not usable: containers/image
    // sends it only after a Bearer challenge, and the registry challenges
    // with Basic.)
    let dest_tag2 = format!("docker://{}/test/busybox:2", s.addr);
    let (src_ref2, d2) = (src_ref.clone(), dest_tag2.clone());
    let o = tokio::task::spawn_blocking(move || {
        skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "someone:tok",
            &src_ref2,
            &d2,
        ])
    })
    .await
    .unwrap();
    ok(o, "skopeo copy of a second tag");
    assert_eq!(
        blob_count(&s),
        blobs_before,
        "the same blobs and manifest: nothing new stored"
    );

    let back = work.path().join("back");
    let back_ref = format!("oci:{}:v1", back.display());
    let (d2, b2) = (dest.clone(), back_ref.clone());
    let o = tokio::task::spawn_blocking(move || {
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            "berth:tok",
            &d2,
            &b2,
        ])
    })
    .await
    .unwrap();
    ok(o, "skopeo copy from the registry");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], m.digest.as_str());

    let d2 = format!("docker://{}/test/busybox", s.addr);
    let o = tokio::task::spawn_blocking(move || {
        skopeo(&[
            "list-tags",
            "--tls-verify=false",
            "--creds",
            "berth:tok",
            &d2,
        ])
    })
    .await
    .unwrap();
    let o = ok(o, "skopeo list-tags");
    let tags: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["1", "2"]));

    // Without credentials the registry refuses.
    let d2 = dest.clone();
    let b3 = format!("oci:{}:v2", back.display());
    let o =
        tokio::task::spawn_blocking(move || skopeo(&["copy", "--src-tls-verify=false", &d2, &b3]))
            .await
            .unwrap();
    assert!(!o.status.success());
}
