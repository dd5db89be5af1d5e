//! Store tests: imports of every format, save round trips, tags, removal,
//! prune, builds from an upperdir, and an overlay mount of imported layers.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::*;
use crate::layer::testutil::TarBuilder;
use crate::layer::{is_opaque, is_whiteout};

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn hex(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn tag(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap()
}

/// A tar of plain files, for building archives.
fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = TarBuilder::new();
    for (name, data) in files {
        b = b.file(name, data);
    }
    b.finish()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    store: ImageStore,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    Fixture {
        dir: tmp.path().to_path_buf(),
        _tmp: tmp,
        store,
    }
}

impl Fixture {
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.join(name);
        fs::write(&p, bytes).unwrap();
        p
    }
    fn layer_count(&self) -> usize {
        fs::read_dir(self.store.root().join("layers"))
            .unwrap()
            .count()
    }
}

fn base_layer() -> Vec<u8> {
    TarBuilder::new()
        .dir("bin")
        .file("bin/sh", b"#!shell")
        .dir("etc")
        .file("etc/passwd", b"root:x:0:0")
        .file("etc/motd", b"hello")
        .dir("var/cache")
        .file("var/cache/old", b"stale")
        .finish()
}

fn top_layer() -> Vec<u8> {
    TarBuilder::new()
        .dir("etc")
        .file("etc/.wh.motd", b"")
        .dir("var/cache")
        .file("var/cache/.wh..wh..opq", b"")
        .file("var/cache/new", b"fresh")
        .finish()
}

fn config_json(diff_ids: &[String]) -> Vec<u8> {
    // Field order and the docker-only field must survive byte for byte.
    format!(
        r#"{{"architecture":"amd64","os":"linux","docker_version":"24.0.7","config":{{"Env":["PATH=/bin"],"Cmd":["sh"]}},"created":"2024-01-02T03:04:05Z","rootfs":{{"type":"layers","diff_ids":{}}}}}"#,
        serde_json::to_string(diff_ids).unwrap()
    )
    .into_bytes()
}

/// `docker save` (legacy form): `<id>/layer.tar` entries, `<config>.json`,
/// manifest.json listed last as docker writes it. The top layer is gzipped.
fn legacy_save(tags: &[&str]) -> (Vec<u8>, String) {
    let (l1, l2) = (base_layer(), top_layer());
    let config = config_json(&[digest(&l1), digest(&l2)]);
    let id = digest(&config);
    let (v1a, v1b) = ("a".repeat(64), "b".repeat(64));
    let manifest = serde_json::json!([{
        "Config": format!("{}.json", hex(&id)),
        "RepoTags": tags,
        "Layers": [format!("{v1a}/layer.tar"), format!("{v1b}/layer.tar")],
    }]);
    let tar = TarBuilder::new()
        .dir(&v1a)
        .file(&format!("{v1a}/layer.tar"), &l1)
        .file(&format!("{v1a}/VERSION"), b"1.0")
        .dir(&v1b)
        .file(&format!("{v1b}/layer.tar"), &gzip(&l2))
        .file(&format!("{}.json", hex(&id)), &config)
        .file("manifest.json", manifest.to_string().as_bytes())
        .file("repositories", b"{}")
        .finish();
    (tar, id)
}

/// An OCI image layout in a directory: gzip layer, descriptor digests, a
/// containerd name annotation.
fn oci_layout(dir: &Path, name: Option<&str>) -> String {
    let layer = base_layer();
    let gz = gzip(&layer);
    let config = config_json(&[digest(&layer)]);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(&gz), "size": gz.len()}],
    })
    .to_string();
    let mut desc = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest(manifest.as_bytes()),
        "size": manifest.len(),
    });
    if let Some(n) = name {
        desc["annotations"] = serde_json::json!({"io.containerd.image.name": n, "org.opencontainers.image.ref.name": "x"});
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [desc]}).to_string();
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    for blob in [&gz[..], &config, manifest.as_bytes()] {
        fs::write(dir.join("blobs/sha256").join(hex(&digest(blob))), blob).unwrap();
    }
    fs::write(dir.join("index.json"), index).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    digest(&config)
}

/// Tars a directory tree of plain files (for "OCI layout as a tar").
fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn imports_plain_gzip_and_zstd_rootfs_as_the_same_layer() {
    let f = fixture();
    let layer = base_layer();
    let plain = f
        .store
        .import(&f.write("rootfs.tar", &layer), Some(&tag("base:1")))
        .unwrap();
    assert_eq!(plain.layers.len(), 1);
    assert_eq!(plain.layers[0].diff_id, digest(&layer));
    assert_eq!(plain.size, 7 + 10 + 5 + 5);
    assert_eq!(plain.tags, vec![tag("base:1")]);
    let cfg = plain.config.config().as_ref().unwrap();
    assert_eq!(cfg.env().as_deref(), Some(&[DEFAULT_PATH.to_string()][..]));
    assert!(cfg.cmd().is_none());
    assert_eq!(*plain.config.os(), Os::Linux);
    assert!(plain.created.is_some());

    let gz = f
        .store
        .import(&f.write("rootfs.gz", &gzip(&layer)), None)
        .unwrap();
    let zst = f
        .store
        .import(
            &f.write("rootfs.bin", &zstd::encode_all(&layer[..], 3).unwrap()),
            None,
        )
        .unwrap();
    assert_eq!(gz.layers, plain.layers);
    assert_eq!(zst.layers, plain.layers);
    assert_eq!(f.layer_count(), 1, "a shared layer is stored once");

    let paths = f.store.layer_paths(&plain).unwrap();
    assert_eq!(
        fs::read(paths[0].join("etc/passwd")).unwrap(),
        b"root:x:0:0"
    );
    assert!(paths[0].starts_with(f.store.root().join("l")));
    let blob = f
        .store
        .root()
        .join("blobs/sha256")
        .join(hex(&plain.layers[0].diff_id));
    assert_eq!(
        fs::read(blob).unwrap(),
        layer,
        "blobs are the uncompressed tar"
    );
}

#[test]
fn imports_legacy_docker_save_with_whiteouts_and_opaque_dirs() {
    let f = fixture();
    let (tar, id) = legacy_save(&["web:1", "docker.io/library/web:2"]);
    let image = f.store.import(&f.write("save.tar", &tar), None).unwrap();
    assert_eq!(image.id, id);
    assert_eq!(image.tags, vec![tag("web:1"), tag("web:2")]);
    assert_eq!(image.created.as_deref(), Some("2024-01-02T03:04:05Z"));
    assert_eq!(
        image.config.config().as_ref().unwrap().cmd().as_deref(),
        Some(&["sh".to_string()][..])
    );
    let blob = fs::read(f.store.root().join("blobs/sha256").join(hex(&id))).unwrap();
    assert_eq!(digest(&blob), id, "config kept byte for byte");

    let paths = f.store.layer_paths(&image).unwrap();
    assert_eq!(paths.len(), 2);
    let top = &paths[1];
    assert!(is_whiteout(
        &fs::symlink_metadata(top.join("etc/motd")).unwrap()
    ));
    assert!(is_opaque(&top.join("var/cache")));
    assert!(!top.join("etc/.wh.motd").exists());
    assert_eq!(fs::read(top.join("var/cache/new")).unwrap(), b"fresh");

    // A tag given on import replaces the archive's tags.
    let again = f
        .store
        .import(&f.write("save2.tar", &tar), Some(&tag("other:x")))
        .unwrap();
    assert_eq!(again.id, id);
    assert_eq!(f.store.resolve("other:x").unwrap().id, id);
    assert_eq!(f.layer_count(), 2);
}

#[test]
fn overlay_mount_of_imported_layers_applies_whiteouts() {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
    let f = fixture();
    let (tar, _) = legacy_save(&["web:1"]);
    let image = f.store.import(&f.write("save.tar", &tar), None).unwrap();
    let mut lowers = f.store.layer_paths(&image).unwrap();
    lowers.reverse();
    let lowerdir: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    let target = f.dir.join("merged");
    fs::create_dir(&target).unwrap();
    mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        MsFlags::MS_RDONLY,
        Some(format!("lowerdir={}", lowerdir.join(":")).as_str()),
    )
    .unwrap();
    let _guard = Unmount(target.clone());
    assert!(target.join("etc/passwd").exists());
    assert!(
        !target.join("etc/motd").exists(),
        "whiteout hides the lower file"
    );
    assert!(
        !target.join("var/cache/old").exists(),
        "opaque dir hides lower entries"
    );
    assert!(target.join("var/cache/new").exists());
}

#[test]
fn imports_oci_layout_dir_and_tar() {
    let f = fixture();
    let layout = f.dir.join("layout");
    let id = oci_layout(&layout, Some("docker.io/library/busybox:1.36"));
    let image = f.store.import(&layout, None).unwrap();
    assert_eq!(image.id, id);
    assert_eq!(image.tags, vec![tag("busybox:1.36")]);
    assert_eq!(image.layers[0].diff_id, digest(&base_layer()));

    let g = fixture();
    let image2 = g
        .store
        .import(&g.write("layout.tar", &tar_dir(&layout)), None)
        .unwrap();
    assert_eq!(image2.id, id);
    assert_eq!(image2.tags, vec![tag("busybox:1.36")]);
    let image3 = g
        .store
        .import(
            &g.write(
                "layout.tar.zst",
                &zstd::encode_all(&tar_dir(&layout)[..], 1).unwrap(),
            ),
            None,
        )
        .unwrap();
    assert_eq!(image3.id, id);
}

#[test]
fn save_then_import_gives_the_same_image() {
    let f = fixture();
    let (tar, id) = legacy_save(&["web:1"]);
    f.store.import(&f.write("save.tar", &tar), None).unwrap();
    let mut out = Vec::new();
    f.store.save("web:1", &mut out).unwrap();

    // The archive has both the OCI layout and the legacy manifest.
    let mut names = HashSet::new();
    let mut ar = tar::Archive::new(&out[..]);
    let mut manifest = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        if name == "manifest.json" {
            std::io::Read::read_to_end(&mut e, &mut manifest).unwrap();
        }
        names.insert(name);
    }
    for n in [
        "oci-layout",
        "index.json",
        "manifest.json",
        &format!("blobs/sha256/{}", hex(&id)),
    ] {
        assert!(names.contains(n), "{n} missing from {names:?}");
    }
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["web:1"]));
    assert_eq!(manifest[0]["Config"], format!("blobs/sha256/{}", hex(&id)));

    let g = fixture();
    let back = g.store.import(&g.write("out.tar", &out), None).unwrap();
    assert_eq!(back.id, id);
    assert_eq!(back.tags, vec![tag("web:1")]);

    // The OCI half alone (as an OCI tool would read it) gives the same id.
    let unpacked = g.dir.join("unpacked");
    tar::Archive::new(&out[..]).unpack(&unpacked).unwrap();
    fs::remove_file(unpacked.join("manifest.json")).unwrap();
    let h = fixture();
    let oci = h.store.import(&unpacked, None).unwrap();
    assert_eq!(oci.id, id);
    assert_eq!(oci.tags, vec![tag("web:1")]);
}

#[test]
fn tags_resolution_removal_and_prune() {
    let f = fixture();
    let (tar, id) = legacy_save(&["web:1"]);
    f.store.import(&f.write("save.tar", &tar), None).unwrap();
    let base = f
        .store
        .import(&f.write("base.tar", &base_layer()), Some(&tag("base")))
        .unwrap();

    // Every reference form resolves.
    let h = hex(&id);
    for r in ["web:1", &id, h, &h[..6], &format!("sha256:{}", &h[..8])] {
        assert_eq!(f.store.resolve(r).unwrap().id, id, "{r}");
    }
    assert_eq!(f.store.resolve("base").unwrap().id, base.id);
    assert!(matches!(
        f.store.resolve("nope"),
        Err(ImageError::NotFound(_))
    ));
    assert!(
        matches!(f.store.resolve("abc"), Err(ImageError::NotFound(_))),
        "prefix too short"
    );
    assert_eq!(
        f.store.resolve("web").unwrap_err().to_string(),
        "no such image: web"
    );

    f.store.tag("web:1", &tag("web:2")).unwrap();
    assert_eq!(f.store.resolve("web:2").unwrap().tags.len(), 2);
    assert_eq!(f.store.list().unwrap().len(), 2);

    let never = |_: &str| false;
    let always = |_: &str| true;
    // By id with two tags: refused without force.
    assert!(matches!(
        f.store.remove(&id, false, &never),
        Err(ImageError::MultipleTags { .. })
    ));
    // One of two tags: untag only.
    assert_eq!(
        f.store.remove("web:2", false, &never).unwrap(),
        ["Untagged: web:2"]
    );
    // The last tag of an image in use: refused, then untag-only with force.
    let err = f
        .store
        .remove("web:1", false, &always)
        .unwrap_err()
        .to_string();
    assert!(err.contains("in use") && err.contains("web:1"), "{err}");
    assert_eq!(
        f.store.remove("web:1", true, &always).unwrap(),
        ["Untagged: web:1"]
    );
    assert!(f.store.resolve(&id).unwrap().tags.is_empty());

    // Prune keeps the untagged image while in use, and its layers.
    let report = f.store.prune(&always, &HashSet::new()).unwrap();
    assert!(report.images_deleted.is_empty());
    assert_eq!(report.layers_deleted, 0);
    assert_eq!(f.layer_count(), 2);

    // Not in use any more: the image goes, and its top layer; the base
    // layer stays because "base" still uses it.
    let report = f.store.prune(&never, &HashSet::new()).unwrap();
    assert_eq!(report.images_deleted, vec![id.clone()]);
    assert_eq!(report.layers_deleted, 1);
    assert!(report.bytes_reclaimed >= 5 + top_layer().len() as u64);
    assert_eq!(f.layer_count(), 1);
    assert!(matches!(f.store.resolve(&id), Err(ImageError::NotFound(_))));
    assert!(!f.store.root().join("blobs/sha256").join(hex(&id)).exists());

    // Removing the last tag deletes the image; its layer is then collected
    // unless a container keeps it.
    assert_eq!(
        f.store.remove("base", false, &never).unwrap(),
        [
            "Untagged: base:latest".to_string(),
            format!("Deleted: {}", base.id)
        ]
    );
    let keep: HashSet<String> = [base.layers[0].diff_id.clone()].into();
    assert_eq!(f.store.gc_layers(&keep).unwrap().layers_deleted, 0);
    assert_eq!(
        f.store
            .prune(&never, &HashSet::new())
            .unwrap()
            .layers_deleted,
        1
    );
    assert_eq!(f.layer_count(), 0);
    assert_eq!(
        fs::read_dir(f.store.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(fs::read_dir(f.store.root().join("l")).unwrap().count(), 0);
}

#[test]
fn builds_a_layer_from_an_upperdir() {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let f = fixture();
    let (tar, _) = legacy_save(&["web:1"]);
    let base = f.store.import(&f.write("save.tar", &tar), None).unwrap();
    let upper = f.dir.join("upper");
    fs::create_dir_all(upper.join("etc")).unwrap();
    fs::write(upper.join("etc/app.conf"), "port=80").unwrap();
    mknod(
        &upper.join("etc/passwd"),
        SFlag::S_IFCHR,
        Mode::empty(),
        makedev(0, 0),
    )
    .unwrap();

    let layer = f.store.add_layer_from_dir(&upper).unwrap();
    assert_eq!(layer.size, 7);
    assert_eq!(
        f.store.add_layer_from_dir(&upper).unwrap(),
        layer,
        "same content, same diff_id"
    );
    // Pending layers survive a prune that runs mid-build.
    f.store.prune(&|_| false, &HashSet::new()).unwrap();

    let mut layers = base.layers.clone();
    layers.push(layer.clone());
    let image = f
        .store
        .create_image(base.config.clone(), layers.clone(), Some(&tag("web:2")))
        .unwrap();
    assert_eq!(image.config.rootfs().diff_ids().len(), 3);
    assert_eq!(image.layers, layers);
    let same = f
        .store
        .create_image(base.config.clone(), layers, None)
        .unwrap();
    assert_eq!(same.id, image.id, "canonical config json gives a stable id");

    let paths = f.store.layer_paths(&image).unwrap();
    assert!(is_whiteout(
        &fs::symlink_metadata(paths[2].join("etc/passwd")).unwrap()
    ));
    assert_eq!(fs::read(paths[2].join("etc/app.conf")).unwrap(), b"port=80");

    let missing = LayerRecord {
        diff_id: format!("sha256:{}", "0".repeat(64)),
        size: 0,
    };
    let err = f
        .store
        .create_image(base.config.clone(), vec![missing], None)
        .unwrap_err();
    assert!(matches!(err, ImageError::MissingLayer(_)), "{err}");
}

#[test]
fn bad_archives_name_the_file_and_entry_and_leave_nothing_behind() {
    let f = fixture();
    let (l1, l2) = (base_layer(), top_layer());
    // Config claims a diff_id the layer does not have.
    let config = config_json(&[digest(&l1), digest(b"something else")]);
    let id = digest(&config);
    let (a, b) = ("a".repeat(64), "b".repeat(64));
    let manifest = serde_json::json!([{"Config": format!("{}.json", hex(&id)), "RepoTags": ["bad:1"], "Layers": [format!("{a}/layer.tar"), format!("{b}/layer.tar")]}]);
    let tar = archive(&[
        (&format!("{a}/layer.tar"), &l1),
        (&format!("{b}/layer.tar"), &l2),
        (&format!("{}.json", hex(&id)), &config),
        ("manifest.json", manifest.to_string().as_bytes()),
    ]);
    let path = f.write("bad.tar", &tar);
    let err = f.store.import(&path, None).unwrap_err().to_string();
    assert!(
        err.contains("bad.tar")
            && err.contains(&format!("{b}/layer.tar"))
            && err.contains("diff_id"),
        "{err}"
    );
    assert!(!err.contains('\n'));
    assert_eq!(f.layer_count(), 0, "nothing published");
    assert!(f.store.list().unwrap().is_empty());
    assert_eq!(fs::read_dir(f.store.root().join("tmp")).unwrap().count(), 0);

    // A layer listed but absent.
    let manifest = serde_json::json!([{"Config": format!("{}.json", hex(&id)), "Layers": [format!("{a}/layer.tar"), format!("{b}/layer.tar")]}]);
    let tar = archive(&[
        (&format!("{}.json", hex(&id)), &config),
        ("manifest.json", manifest.to_string().as_bytes()),
    ]);
    let err = f
        .store
        .import(&f.write("missing.tar", &tar), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing.tar") && err.contains("layer.tar") && err.contains("missing"),
        "{err}"
    );

    // docker < 1.10: no manifest.json.
    let v1 = archive(&[(&format!("{a}/layer.tar"), &l1), ("repositories", b"{}")]);
    let err = f
        .store
        .import(&f.write("v1.tar", &v1), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("v1.tar") && err.contains("1.10"), "{err}");

    // Garbage and unsupported compression.
    let err = f
        .store
        .import(&f.write("junk", &[7u8; 1000]), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("junk"), "{err}");
    let err = f
        .store
        .import(&f.write("x.xz", b"\xfd7zXZ\x00rest"), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("x.xz") && err.contains("xz"), "{err}");

    // A rootfs with a path escaping the layer.
    let evil = TarBuilder::new()
        .file("ok", b"1")
        .raw_file(b"../../escape", b"x")
        .finish();
    let err = f
        .store
        .import(&f.write("evil.tar", &evil), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("evil.tar") && err.contains("../../escape"),
        "{err}"
    );
    assert_eq!(f.layer_count(), 0);
    assert!(!f.dir.join("escape").exists() && !f.store.root().join("escape").exists());
}

#[test]
fn open_recovers_tmp_and_locks_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("s");
    let store = ImageStore::open(&root).unwrap();
    assert!(matches!(
        ImageStore::open(&root),
        Err(ImageError::Locked { .. })
    ));
    let scratch = store.tmp_dir().unwrap().keep();
    fs::write(scratch.join("half-written"), "x").unwrap();
    drop(store);
    let store = ImageStore::open(&root).unwrap();
    assert!(!scratch.exists());
    assert_eq!(
        store.tmp_dir().unwrap().path().metadata().unwrap().dev(),
        root.metadata().unwrap().dev()
    );
}

#[test]
fn fuzz_entry_point_survives_junk() {
    let (tar, _) = legacy_save(&["web:1"]);
    crate::archive::parse_archive_for_fuzz(&tar);
    for cut in [0, 1, 100, 511, 512, 1500, tar.len() / 2] {
        crate::archive::parse_archive_for_fuzz(&tar[..cut]);
    }
    crate::archive::parse_archive_for_fuzz(&gzip(&tar)[..40]);
    crate::archive::parse_archive_for_fuzz(b"\x28\xb5\x2f\xfdjunk");
    let manifest = archive(&[
        ("manifest.json", b"[{\"Config\":\"../x\",\"Layers\":null}]"),
        ("index.json", b"{}"),
    ]);
    crate::archive::parse_archive_for_fuzz(&manifest);

    // Random byte flips, cuts and splices of valid archives (legacy, OCI,
    // compressed): a poor man's fuzzer that runs in the unit tests.
    use rand::{Rng, SeedableRng};
    let tmp = tempfile::tempdir().unwrap();
    oci_layout(tmp.path(), Some("busybox:1"));
    let oci = tar_dir(tmp.path());
    let seeds = [tar, oci.clone(), gzip(&oci)];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for i in 0..3000 {
        let mut input = seeds[i % seeds.len()].clone();
        for _ in 0..rng.random_range(1..8) {
            let at = rng.random_range(0..input.len());
            input[at] = rng.random();
        }
        if i % 5 == 0 {
            input.truncate(rng.random_range(0..input.len()));
        }
        crate::archive::parse_archive_for_fuzz(&input);
    }
}

#[test]
fn store_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ImageStore>();
}
