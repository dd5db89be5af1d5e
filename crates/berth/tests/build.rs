//! `berth build` through the real binary: layers, config, cache.

mod common;
use common::*;

fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    dir
}

const FILE: &str = "FROM busybox\nARG GREETING=hi\nENV WHO=world\nCOPY a.txt /app/a.txt\nWORKDIR /app\nRUN echo \"$GREETING $WHO\" > greeting\nCMD [\"sh\", \"-c\", \"cat a.txt greeting\"]\n";

#[test]
fn build_runs_and_caches() {
    let d = daemon();
    let ctx = context(&[
        ("Containerfile", FILE),
        ("a.txt", "one\n"),
        (".dockerignore", "secret\n"),
        ("secret", "x"),
    ]);
    let c = ctx.path().to_str().unwrap();
    let first = d.ok(&["build", "-t", "app:1", "--build-arg", "GREETING=hello", c]);
    assert!(first.contains("Step 1/7 : FROM busybox"), "{first}");
    assert!(first.contains("Successfully tagged app:1"), "{first}");
    assert_eq!(d.ok(&["run", "--rm", "app:1"]), "one\nhello world\n");
    let out = d.cli(&["run", "--rm", "app:1", "ls", "/app"]);
    assert!(!stdout(&out).contains("secret"));

    // Unchanged context: every step from the cache, same image, no new layer.
    let second = d.ok(&["build", "-t", "app:1", "--build-arg", "GREETING=hello", c]);
    assert_eq!(
        second.matches("Using cache").count(),
        5,
        "every step after FROM and ARG: {second}"
    );
    let id1 = first
        .lines()
        .find(|l| l.starts_with("Successfully built"))
        .unwrap()
        .to_string();
    let id2 = second
        .lines()
        .find(|l| l.starts_with("Successfully built"))
        .unwrap()
        .to_string();
    assert_eq!(id1, id2);

    // A changed file rebuilds from its COPY on.
    std::fs::write(ctx.path().join("a.txt"), "two\n").unwrap();
    let third = d.ok(&["build", "-t", "app:1", "--build-arg", "GREETING=hello", c]);
    assert_eq!(
        third.matches("Using cache").count(),
        1,
        "ENV stays cached:\n{third}"
    );
    assert_eq!(d.ok(&["run", "--rm", "app:1"]), "two\nhello world\n");
}

#[test]
fn build_errors_name_file_and_line() {
    let d = daemon();
    let ctx = context(&[("Containerfile", "FROM busybox\nRUN true\nBOGUS x\n")]);
    d.fails(
        &["build", "-t", "bad", ctx.path().to_str().unwrap()],
        "Containerfile:3",
    );

    let ctx = context(&[(
        "Containerfile",
        "FROM busybox\nRUN echo partial > /p; exit 5\n",
    )]);
    let out = d.cli(&["build", "-t", "failing", ctx.path().to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("5"),
        "exit code shown: {}",
        stderr(&out)
    );
    assert!(
        !d.ok(&["images"]).contains("failing"),
        "no half-built image"
    );
}

#[test]
fn image_volumes_get_anonymous_volumes() {
    let d = daemon();
    let ctx = context(&[(
        "Containerfile",
        "FROM busybox\nVOLUME /data\nCMD [\"sh\", \"-c\", \"echo v > /data/f && cat /data/f\"]\n",
    )]);
    d.ok(&["build", "-q", "-t", "vol:1", ctx.path().to_str().unwrap()]);
    assert_eq!(d.ok(&["run", "--rm", "vol:1"]), "v\n");
}
