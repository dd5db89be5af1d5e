//! Images through the real binary: import, list, tag, rmi, save, prune.

mod common;
use common::*;

#[test]
fn import_tag_save_rmi_prune() {
    let d = daemon();
    let images = d.ok(&["images"]);
    assert!(images.starts_with("REPOSITORY"), "{images}");
    assert!(
        images
            .lines()
            .any(|l| l.starts_with("busybox ") && l.contains("latest")),
        "{images}"
    );
    d.ok(&["tag", "busybox", "mybox:1.0"]);
    assert!(d.ok(&["images"]).contains("mybox"));
    let list: serde_json::Value = serde_json::from_str(&d.ok(&["images", "--json"])).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "a tag shares the image: {list}"
    );

    // Save and re-import gives the same image id.
    let archive = d.dir.path().join("saved.tar");
    d.ok(&[
        "image",
        "save",
        "mybox:1.0",
        "-o",
        archive.to_str().unwrap(),
    ]);
    let id_before = inspect(&d, "mybox:1.0")["id"].as_str().unwrap().to_string();
    d.ok(&["rmi", "mybox:1.0"]);
    let out = d.ok(&[
        "image",
        "import",
        archive.to_str().unwrap(),
        "--tag",
        "again",
    ]);
    assert_eq!(out.trim(), id_before);
    // Streamed through the API instead of read by the daemon: same image.
    let a = archive.to_str().unwrap();
    let out = d.ok(&["image", "import", "--upload", a, "--tag", "again2"]);
    assert_eq!(out.trim(), id_before);
    d.ok(&["rmi", "again2"]);

    // An image used by a container is not removed without -f.
    d.ok(&["create", "--name", "user", "busybox", "true"]);
    let out = d.cli(&["rmi", &id_before]);
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
    d.ok(&["rm", "user"]);
    d.ok(&["rmi", "busybox", "again"]);
    assert_eq!(d.ok(&["images", "-q"]).trim(), "");
    let pruned: serde_json::Value =
        serde_json::from_str(&d.ok(&["image", "prune", "--json"])).unwrap();
    assert!(
        pruned["layers_deleted"].as_u64().unwrap() >= 1,
        "space is given back: {pruned}"
    );
}

#[test]
fn import_rejects_garbage_with_one_line() {
    let d = daemon();
    let bad = d.dir.path().join("bad.tar");
    std::fs::write(&bad, b"this is not an archive at all").unwrap();
    let out = d.cli(&["image", "import", bad.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert_eq!(
        d.ok(&["images", "-q"]).lines().count(),
        1,
        "nothing half-imported"
    );
}
