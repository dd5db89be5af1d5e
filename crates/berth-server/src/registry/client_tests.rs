//! berth-image's distribution client (push, pull) against this registry,
//! end to end on loopback: layers skipped when present, images identical
//! after a round trip, compressed and multi-platform images, failover.

use super::*;
use berth_image::distribution::{self, PullEvent, PushEvent, Registry};
use berth_image::ImageStore;
use berth_types::ImageRef;
use sha2::Digest as _;
use std::io::Write;

struct Served {
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

async fn serve(token: Option<&str>, peers: Vec<String>) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let mut store =
        RegistryStore::open(&dir.path().join("registry"), RegistryConfig::default()).unwrap();
    if !peers.is_empty() {
        store = store.with_peers(move || peers.clone(), token.map(String::from));
    }
    let store = Arc::new(store);
    let app = auth::require_token(routes(store.clone()), token.map(String::from));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Served {
        addr,
        store,
        _dir: dir,
        task,
    }
}

/// A cluster token, long enough to derive the cluster CA from.
const TOKEN: &str = "t0123456789abcdef-registry";

/// A registry as a server with a token serves it: HTTPS under the cluster
/// CA of [`TOKEN`], fetching from `peers` over HTTPS too.
async fn serve_tls(peers: Vec<String>) -> Served {
    let ca = berth_tls::ClusterCa::from_token(TOKEN).unwrap();
    let identity = ca.issue_server("r", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut store =
        RegistryStore::open(&dir.path().join("registry"), RegistryConfig::default()).unwrap();
    if !peers.is_empty() {
        let tls = berth_tls::client_config(&ca, Some(&identity)).unwrap();
        store = store.with_tls_peers(move || peers.clone(), Some(TOKEN.into()), tls);
    }
    let store = Arc::new(store);
    let app = auth::require_token(routes(store.clone()), Some(TOKEN.into()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = berth_tls::server_config(&ca, &identity).unwrap();
    let task = tokio::spawn(berth_tls::serve_tls(
        listener,
        config,
        app,
        std::future::pending(),
    ));
    Served {
        addr,
        store,
        _dir: dir,
        task,
    }
}

struct Local {
    dir: tempfile::TempDir,
    store: ImageStore,
}

fn local() -> Local {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("store")).unwrap();
    Local { dir, store }
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

impl Local {
    /// Imports a root file system of `files` tagged `tag`.
    fn import(&self, tag: &str, files: &[(&str, &[u8])]) -> berth_image::Image {
        let path = self
            .dir
            .path()
            .join(format!("{}.tar", &digest(tag.as_bytes())[7..]));
        std::fs::write(&path, tar_of(files)).unwrap();
        self.store
            .import(&path, Some(&ImageRef::parse(tag).unwrap()))
            .unwrap()
    }
}

/// Runs blocking client code off the runtime's workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_skips_present_layers_and_pull_round_trips() {
    let s = serve(Some("tok"), vec![]).await;
    let addr = s.addr.clone();
    let (report1, report2, report3, pulled, again, image) = blocking(move || {
        let a = local();
        let image = a.import("team/app:1", &[("hello.txt", b"hello"), ("bin/x", b"x")]);
        let r = Registry::new(&addr, Some("tok"));
        let mut events = Vec::new();
        let report1 =
            distribution::push(&a.store, "team/app:1", &r, &mut |e| events.push(e)).unwrap();
        assert!(events
            .iter()
            .any(|e| matches!(e, PushEvent::Uploaded { .. })));
        assert!(events
            .iter()
            .any(|e| matches!(e, PushEvent::Manifest { .. })));
        // Same image again: nothing to send.
        let report2 = distribution::push(&a.store, "team/app:1", &r, &mut |_| {}).unwrap();
        // Another image with the same layer, under another name: the
        // layer is skipped, only its config goes.
        a.store
            .tag("team/app:1", &ImageRef::parse("other/app:2").unwrap())
            .unwrap();
        let report3 = distribution::push(&a.store, "other/app:2", &r, &mut |_| {}).unwrap();

        let b = local();
        let mut pull_events = Vec::new();
        let pulled = distribution::pull(&b.store, &r, "team/app", "1", None, &mut |e| {
            pull_events.push(e)
        })
        .unwrap();
        assert!(pull_events
            .iter()
            .any(|e| matches!(e, PullEvent::Downloaded { .. })));
        let got = b.store.resolve("team/app:1").unwrap();
        assert_eq!(got.id, image.id, "same config bytes, same image id");
        assert_eq!(got.layers, image.layers);
        assert_eq!(b.store.layer_paths(&got).unwrap().len(), 1);
        let again = distribution::pull(&b.store, &r, "team/app", "1", None, &mut |_| {}).unwrap();
        (report1, report2, report3, pulled, again, image)
    })
    .await;
    assert_eq!(
        (
            report1.layers_uploaded,
            report1.layers_skipped,
            report1.config_uploaded
        ),
        (1, 0, true)
    );
    assert_eq!(report1.repository, "team/app");
    assert_eq!(report1.tag, "1");
    assert_eq!(report1.image_id, image.id);
    assert_eq!(
        (
            report2.layers_uploaded,
            report2.layers_skipped,
            report2.bytes_uploaded
        ),
        (0, 1, 0)
    );
    assert_eq!(report2.digest, report1.digest, "the same manifest");
    assert_eq!((report3.layers_uploaded, report3.layers_skipped), (0, 1));
    assert_eq!(report3.repository, "other/app");
    assert_eq!((pulled.layers_downloaded, pulled.layers_skipped), (1, 0));
    assert_eq!(pulled.digest, report1.digest);
    assert_eq!(pulled.tag, "team/app:1");
    assert_eq!((again.layers_downloaded, again.layers_skipped), (0, 1));
    // Stored once in the registry: one layer, one config, one manifest.
    let blobs = std::fs::read_dir(s.store.root().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_refuses_an_image_named_by_id_and_needs_the_token() {
    let s = serve(Some("tok"), vec![]).await;
    let addr = s.addr.clone();
    blocking(move || {
        let a = local();
        let image = a.import("app:1", &[("f", b"1")]);
        let r = Registry::new(&addr, Some("tok"));
        let err = distribution::push(&a.store, &image.id, &r, &mut |_| {}).unwrap_err();
        assert!(
            matches!(err, distribution::DistributionError::NoName(_)),
            "{err}"
        );
        let anon = Registry::new(&addr, None);
        let err = distribution::push(&a.store, "app:1", &anon, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("401: unauthorized"), "{err}");
        let err = distribution::pull(&a.store, &r, "nothing", "1", None, &mut |_| {}).unwrap_err();
        assert!(err.is_not_found() && !err.is_unreachable(), "{err}");
        assert!(err.to_string().contains("MANIFEST_UNKNOWN"), "{err}");
    })
    .await;
}

/// Pushes blobs and a manifest over plain HTTP, as another client would.
fn raw_push(addr: &str, repo: &str, tag: &str, media_type: &str, blobs: &[&[u8]], manifest: &[u8]) {
    let r = Registry::new(addr, None);
    for b in blobs {
        let d = digest(b);
        if !r.has_blob(repo, &d).unwrap() {
            r.upload_blob(repo, &d, b.len() as u64, *b).unwrap();
        }
    }
    r.put_manifest(repo, tag, media_type, manifest).unwrap();
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_gzip_layers_and_follows_an_index_to_this_platform() {
    let s = serve(None, vec![]).await;
    let addr = s.addr.clone();
    blocking(move || {
        // A docker-style image: gzipped layer (digest != diff_id).
        let layer = tar_of(&[("etc/hostname", b"box\n")]);
        let gz = gzip(&layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]}
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": manifest::DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": digest(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": digest(&gz), "size": gz.len()}]
        }))
        .unwrap();
        raw_push(&addr, "lib/box", "1", manifest::DOCKER_MANIFEST, &[&gz, &config], &manifest);
        // An index whose other entry is for another platform.
        let other = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": manifest::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
            "layers": []
        }))
        .unwrap();
        let r = Registry::new(&addr, None);
        r.put_manifest("lib/box", &digest(&other), manifest::OCI_MANIFEST, &other)
            .unwrap();
        let arch = if cfg!(target_arch = "x86_64") { "amd64" } else { "arm64" };
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": manifest::OCI_INDEX,
            "manifests": [
                {"mediaType": manifest::OCI_MANIFEST, "digest": digest(&other), "size": other.len(),
                 "platform": {"os": "linux", "architecture": "s390x"}},
                {"mediaType": manifest::DOCKER_MANIFEST, "digest": digest(&manifest), "size": manifest.len(),
                 "platform": {"os": "linux", "architecture": arch}}
            ]
        }))
        .unwrap();
        r.put_manifest("lib/box", "multi", manifest::OCI_INDEX, &index)
            .unwrap();

        let b = local();
        let report = distribution::pull(&b.store, &r, "lib/box", "1", None, &mut |_| {}).unwrap();
        assert_eq!(report.image_id, digest(&config));
        assert_eq!(report.layers_downloaded, 1);
        let img = b.store.resolve("lib/box:1").unwrap();
        assert_eq!(img.layers[0].diff_id, digest(&layer));
        let c = local();
        let local_tag = ImageRef::parse("mine:x").unwrap();
        let report =
            distribution::pull(&c.store, &r, "lib/box", "multi", Some(&local_tag), &mut |_| {})
                .unwrap();
        assert_eq!(report.digest, digest(&manifest), "the amd64 entry was chosen");
        assert_eq!(c.store.resolve("mine:x").unwrap().id, digest(&config));
        // By digest, into a store that has it: only tagged.
        let report = distribution::pull(&c.store, &r, "lib/box", &digest(&manifest), None, &mut |_| {})
            .unwrap();
        assert_eq!(report.layers_downloaded, 0);
        assert_eq!(report.tag, "lib/box:latest");
    })
    .await;
}

/// Over HTTPS, as servers with a token serve: `with_servers` derives the
/// cluster CA from the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_server_serves_a_push_and_dead_servers_are_skipped() {
    let a = serve_tls(vec![]).await;
    let b = serve_tls(vec![a.addr.clone()]).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let (a_addr, b_addr) = (a.addr.clone(), b.addr.clone());
    blocking(move || {
        let src = local();
        src.import("app:1", &[("a", b"a"), ("b", b"b")]);
        let servers = vec![dead.clone(), a_addr.clone()];
        let report = distribution::with_servers(&servers, Some(TOKEN), |r| {
            distribution::push(&src.store, "app:1", r, &mut |_| {})
        })
        .unwrap();
        assert_eq!(report.registry, format!("https://{a_addr}"));
        // Pulled from b, which fetches everything from a.
        let dst = local();
        let servers = vec![dead, b_addr.clone()];
        let pulled = distribution::with_servers(&servers, Some(TOKEN), |r| {
            distribution::pull(&dst.store, r, "app", "1", None, &mut |_| {})
        })
        .unwrap();
        assert_eq!(pulled.layers_downloaded, 1);
        assert_eq!(dst.store.resolve("app:1").unwrap().id, report.image_id);
        // A 404 is an answer, not a reason to try other servers.
        let err = distribution::with_servers(std::slice::from_ref(&a_addr), Some(TOKEN), |r| {
            distribution::pull(&dst.store, r, "nope", "1", None, &mut |_| {})
        })
        .unwrap_err();
        assert!(err.is_not_found(), "{err}");
        // Another cluster's token: the servers' certificates are foreign,
        // which no other server would change.
        let err = distribution::with_servers(
            &[a_addr.clone(), b_addr.clone()],
            Some("t0123456789abcdef-elsewhere"),
            |r| distribution::pull(&dst.store, r, "app", "1", None, &mut |_| {}),
        )
        .unwrap_err();
        assert!(
            matches!(err, distribution::DistributionError::Tls { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("wrong --token"), "{err}");
        let err = distribution::with_servers(&[a_addr], Some("short"), |r| {
            distribution::pull(&dst.store, r, "app", "1", None, &mut |_| {})
        })
        .unwrap_err();
        assert!(err.to_string().contains("too short"), "{err}");
    })
    .await;
}

/// A registry without TLS is reached with an explicit `http://`, token or
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_http_addresses_stay_plain() {
    let a = serve(Some("tok"), vec![]).await;
    let servers = vec![format!("http://{}", a.addr)];
    blocking(move || {
        let src = local();
        src.import("app:1", &[("a", b"a")]);
        let report = distribution::with_servers(&servers, Some("tok"), |r| {
            distribution::push(&src.store, "app:1", r, &mut |_| {})
        })
        .unwrap();
        assert_eq!(report.registry, servers[0]);
    })
    .await;
}
