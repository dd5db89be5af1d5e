//! `berth push` to a registry built from berth-server's routes, served as a
//! server with a token serves it (HTTPS under the cluster CA derived from
//! the token), then a pull into another store: layers skipped when present,
//! the image identical. Runs as root (the daemon imports busybox).

mod common;
use berth_image::distribution::{self, PushReport, Registry};
use berth_image::ImageStore;
use berth_server::registry::{self, RegistryConfig, RegistryStore};
use common::*;
use std::sync::Arc;

/// The cluster token of the test registry.
const TOKEN: &str = "t0123456789abcdef-registry-cli";

/// A registry on 127.0.0.1 with token auth over HTTPS, on its own runtime
/// thread.
struct TestRegistry {
    addr: String,
    /// Holds only `ca.crt`, the cluster CA: what skopeo's `--*-cert-dir`
    /// reads (as `berth server` writes DATA/certs.d).
    cert_dir: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

/// The HTTPS client side of the cluster of [`TOKEN`].
fn tls() -> Arc<berth_api::cluster_client::rustls::ClientConfig> {
    let ca = berth_tls::ClusterCa::from_token(TOKEN).unwrap();
    berth_tls::client_config(&ca, None).unwrap()
}

fn registry(token: &str) -> TestRegistry {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = dir.path().join("registry");
    let ca = berth_tls::ClusterCa::from_token(token).unwrap();
    let cert_dir = dir.path().join("certs.d");
    std::fs::create_dir_all(&cert_dir).unwrap();
    std::fs::write(cert_dir.join("ca.crt"), ca.cert_pem()).unwrap();
    let identity = ca.issue_server("registry", &[]).unwrap();
    let config = berth_tls::server_config(&ca, &identity).unwrap();
    let token = token.to_string();
    let addr = rt.block_on(async move {
        let store = Arc::new(RegistryStore::open(&root, RegistryConfig::default()).unwrap());
        let app = registry::auth::require_token(registry::routes(store), Some(token));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(berth_tls::serve_tls(
            listener,
            config,
            app,
            std::future::pending(),
        ));
        addr
    });
    TestRegistry {
        addr,
        cert_dir,
        _dir: dir,
        _rt: rt,
    }
}

fn push_json(d: &berth_testkit::Daemon, args: &[&str]) -> PushReport {
    let mut all = vec!["push"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = d.ok(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn push_skips_present_layers_and_pulls_back_identical() {
    let d = daemon();
    let reg = registry(TOKEN);
    let servers = reg.addr.clone();
    let first = push_json(&d, &["busybox", "--servers", &servers, "--token", TOKEN]);
    assert_eq!(first.repository, "busybox");
    assert_eq!(first.tag, "latest");
    assert_eq!((first.layers_uploaded, first.layers_skipped), (1, 0));
    assert!(first.config_uploaded && first.bytes_uploaded > 0);
    let id = inspect(&d, "busybox")["id"].as_str().unwrap().to_string();
    assert_eq!(first.image_id, id);

    // Again, and under another name: the layer is not sent twice.
    let again = push_json(&d, &["busybox", "--servers", &servers, "--token", TOKEN]);
    assert_eq!(
        (
            again.layers_uploaded,
            again.layers_skipped,
            again.bytes_uploaded
        ),
        (0, 1, 0)
    );
    assert_eq!(again.digest, first.digest);
    d.ok(&["tag", "busybox", "team/tools:1"]);
    let other = push_json(
        &d,
        &["team/tools:1", "--servers", &servers, "--token", TOKEN],
    );
    assert_eq!(
        (other.repository.as_str(), other.tag.as_str()),
        ("team/tools", "1")
    );
    assert_eq!((other.layers_uploaded, other.layers_skipped), (0, 1));

    // Human output says so; a dead server first is skipped.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let list = format!("{dead},{servers}");
    let out = d.ok(&["push", "busybox", "--servers", &list, "--token", TOKEN]);
    assert!(out.contains("Layer already exists"), "{out}");
    assert!(out.contains(&first.digest), "{out}");

    // Refused with another cluster's token, with one line that says so.
    let o = d.fails(
        &[
            "push",
            "busybox",
            "--servers",
            &servers,
            "--token",
            "t0123456789abcdef-another-cluster",
        ],
        "wrong --token",
    );
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    d.fails(
        &[
            "push",
            "nosuchimage",
            "--servers",
            &servers,
            "--token",
            TOKEN,
        ],
        "no such image",
    );

    // Pulled into another store: the same image, ready for overlay.
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("store")).unwrap();
    let r = Registry::with_tls(&servers, Some(TOKEN), tls());
    let pulled = distribution::pull(&store, &r, "team/tools", "1", None, &mut |_| {}).unwrap();
    assert_eq!(pulled.image_id, id);
    assert_eq!(pulled.layers_downloaded, 1);
    let image = store.resolve("team/tools:1").unwrap();
    assert_eq!(image.id, id);
    let layers = store.layer_paths(&image).unwrap();
    assert!(layers[0].join("bin/busybox").is_file());
    let again = distribution::pull(&store, &r, "busybox", "latest", None, &mut |_| {}).unwrap();
    assert_eq!((again.layers_downloaded, again.layers_skipped), (0, 1));
    assert_eq!(store.resolve("busybox").unwrap().id, id);
}

fn skopeo(args: &[&str]) -> Option<std::process::Output> {
    std::process::Command::new("skopeo")
        .args(args)
        .output()
        .ok()
}

/// Images pushed by berth are read by skopeo and the other way round:
/// `berth image save` output goes up with skopeo and comes back into the
/// daemon unchanged. Skipped where skopeo is not installed.
#[test]
fn skopeo_reads_what_berth_pushes_and_berth_imports_what_skopeo_pulls() {
    if skopeo(&["--version"]).is_none() {
        eprintln!("skopeo not installed; skipping");
        return;
    }
    let d = daemon();
    let reg = registry(TOKEN);
    let id = inspect(&d, "busybox")["id"].as_str().unwrap().to_string();
    push_json(&d, &["busybox", "--servers", &reg.addr, "--token", TOKEN]);
    let work = tempfile::tempdir().unwrap();
    let pulled = work.path().join("pulled.tar");
    let src = format!("docker://{}/busybox:latest", reg.addr);
    let dst = format!("oci-archive:{}:busybox:latest", pulled.display());
    let creds = format!("berth:{TOKEN}");
    let cert_dir = reg.cert_dir.to_str().unwrap();
    let o = skopeo(&[
        "copy",
        "--src-cert-dir",
        cert_dir,
        "--src-creds",
        &creds,
        &src,
        &dst,
    ])
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = d.ok(&[
        "image",
        "import",
        pulled.to_str().unwrap(),
        "--tag",
        "viaskopeo",
    ]);
    assert_eq!(out.trim(), id, "skopeo kept every byte");

    let saved = work.path().join("saved.tar");
    d.ok(&["image", "save", "busybox", "-o", saved.to_str().unwrap()]);
    let src = format!("oci-archive:{}", saved.display());
    let dst = format!("docker://{}/fromsave:1", reg.addr);
    let o = skopeo(&[
        "copy",
        "--dest-cert-dir",
        cert_dir,
        "--dest-creds",
        &creds,
        &src,
        &dst,
    ])
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("store")).unwrap();
    let r = Registry::with_tls(&reg.addr, Some(TOKEN), tls());
    let report = distribution::pull(&store, &r, "fromsave", "1", None, &mut |_| {}).unwrap();
    assert_eq!(report.image_id, id);
}
