//! Build tests against the real store with fake step runners.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::*;
use crate::layer::testutil::TarBuilder;

/// A runner that records each step, prints `ran N`, writes `ran-N` (the
/// step count) into the upper dir, and exits with `code`.
struct FakeRunner {
    code: i32,
    steps: Mutex<Vec<Recorded>>,
}

#[derive(Debug, Clone)]
struct Recorded {
    args: Vec<String>,
    env: Vec<String>,
    workdir: String,
    user: String,
    lowers: usize,
}

impl FakeRunner {
    fn new(code: i32) -> Self {
        Self {
            code,
            steps: Mutex::new(Vec::new()),
        }
    }
    fn count(&self) -> usize {
        self.steps.lock().unwrap().len()
    }
    fn last(&self) -> Recorded {
        self.steps.lock().unwrap().last().cloned().unwrap()
    }
}

impl StepRunner for FakeRunner {
    fn run(&self, step: &RunStep<'_>, output: &mut dyn FnMut(&[u8])) -> Result<i32, String> {
        let mut steps = self.steps.lock().unwrap();
        steps.push(Recorded {
            args: step.args.clone(),
            env: step.env.clone(),
            workdir: step.workdir.clone(),
            user: step.user.clone(),
            lowers: step.lowers.len(),
        });
        assert!(step.work.is_dir() && step.upper.is_dir());
        let n = steps.len();
        output(format!("ran {n}\n").as_bytes());
        // Like a command writing into the container: `out/` and the step's
        // last argument as content.
        fs::create_dir_all(step.upper.join("out")).unwrap();
        fs::write(
            step.upper.join(format!("out/ran-{n}")),
            step.args.last().cloned().unwrap_or_default(),
        )
        .unwrap();
        Ok(self.code)
    }
}

struct Fx {
    _tmp: tempfile::TempDir,
    ctx: PathBuf,
    store: ImageStore,
}

fn fx() -> Fx {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    fs::create_dir(&ctx).unwrap();
    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    Fx {
        _tmp: tmp,
        ctx,
        store,
    }
}

impl Fx {
    fn write(&self, rel: &str, data: &str) {
        let p = self.ctx.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    fn opts(&self, tag: Option<&str>) -> BuildOptions {
        BuildOptions {
            context: self.ctx.clone(),
            containerfile: PathBuf::from("Containerfile"),
            tag: tag.map(|t| ImageRef::parse(t).unwrap()),
            build_args: Vec::new(),
            no_cache: false,
        }
    }

    fn build(
        &self,
        runner: &FakeRunner,
        opts: &BuildOptions,
    ) -> (Result<Image, BuildError>, Vec<BuildEvent>) {
        let mut events = Vec::new();
        let res = build(&self.store, runner, opts, &mut |e| events.push(e));
        (res, events)
    }

    fn layer_count(&self) -> usize {
        fs::read_dir(self.store.root().join("layers"))
            .unwrap()
            .count()
    }

    /// Imports a base image with /etc/passwd, /tmp (1777) and the usrmerge
    /// symlink bin -> usr/bin.
    fn base(&self) {
        let tar = TarBuilder::new()
            .dir("etc")
            .file(
                "etc/passwd",
                b"root:x:0:0::/root:/bin/sh\napp:x:100:101::/app:/bin/sh\n",
            )
            .file("etc/group", b"root:x:0:\nstaff:x:50:\n")
            .dir("usr")
            .dir("usr/bin")
            .file("usr/bin/sh", b"#!")
            .symlink("bin", "usr/bin")
            .dir("tmp")
            .finish();
        let p = self.ctx.parent().unwrap().join("base.tar");
        fs::write(&p, tar).unwrap();
        let img = self
            .store
            .import(&p, Some(&ImageRef::parse("base:1").unwrap()))
            .unwrap();
        // TarBuilder makes dirs 0755; make /tmp sticky in the extracted
        // layer, as a real base has it.
        let dirs = self.store.layer_paths(&img).unwrap();
        let tmp = dirs[0].join("tmp");
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).unwrap();
    }

    /// The merged file tree of an image.
    fn tree(&self, img: &Image) -> Tree {
        Tree::from_layers_bottom_first(&self.store.layer_paths(img).unwrap())
    }
}

use std::os::unix::fs::PermissionsExt;

fn read(tree: &Tree, path: &str) -> Option<String> {
    let f = tree.lookup(Path::new(path)).unwrap()?;
    Some(fs::read_to_string(f.real).unwrap_or_else(|_| "<dir>".into()))
}

fn meta(tree: &Tree, path: &str) -> (u32, u32, u32) {
    let m = tree.lookup(Path::new(path)).unwrap().unwrap().meta;
    (m.mode() & 0o7777, m.uid(), m.gid())
}

fn cfg(img: &Image) -> Config {
    img.config.config().clone().unwrap_or_default()
}

fn hits(events: &[BuildEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, BuildEvent::CacheHit))
        .count()
}

const FULL: &str = r#"# a full single-stage build
FROM base:1
ARG VERSION=1
ENV APP=/app \
    GREETING="hello world"
WORKDIR $APP
COPY --chown=app:staff hello.txt ./
COPY dir/ /opt/dir/
COPY --chmod=700 hello.txt /tmp/h
COPY hello.txt /bin/hello
RUN echo $GREETING
LABEL version=$VERSION maintainer="me"
EXPOSE 80 53/udp 8000-8001
VOLUME ["/data"]
USER app
STOPSIGNAL SIGINT
CMD ["serve", "--port", "80"]
"#;

#[test]
fn full_build() {
    let f = fx();
    f.base();
    f.write("Containerfile", FULL);
    f.write("hello.txt", "hi there");
    f.write("dir/a", "A");
    f.write("dir/sub/b", "B");
    let runner = FakeRunner::new(0);
    let (res, events) = f.build(&runner, &f.opts(Some("app:1")));
    let img = res.unwrap_or_else(|e| panic!("{e}"));

    // Steps announced 1..=15, RUN output streamed, then Done.
    let steps: Vec<(usize, usize)> = events
        .iter()
        .filter_map(|e| match e {
            BuildEvent::Step { index, total, .. } => Some((*index, *total)),
            _ => None,
        })
        .collect();
    assert_eq!(steps.len(), 15);
    assert_eq!(steps[0], (1, 15));
    assert!(events.contains(&BuildEvent::Output(b"ran 1\n".to_vec())));
    assert_eq!(
        events.last(),
        Some(&BuildEvent::Done {
            image_id: img.id.clone()
        })
    );
    assert_eq!(hits(&events), 0);

    // Layers: base + WORKDIR (mkdir /app) + 4 COPY + RUN.
    assert_eq!(img.layers.len(), 7);
    assert_eq!(img.tags, vec![ImageRef::parse("app:1").unwrap()]);
    assert_eq!(f.store.resolve("app:1").unwrap().id, img.id);

    let t = f.tree(&img);
    assert_eq!(read(&t, "app/hello.txt").as_deref(), Some("hi there"));
    assert_eq!(meta(&t, "app/hello.txt").1, 100);
    assert_eq!(meta(&t, "app/hello.txt").2, 50);
    assert_eq!(read(&t, "opt/dir/a").as_deref(), Some("A"));
    assert_eq!(read(&t, "opt/dir/sub/b").as_deref(), Some("B"));
    assert_eq!(meta(&t, "opt/dir/a").1, 0, "context files become root's");
    assert_eq!(meta(&t, "tmp/h").0, 0o700);
    // COPY into /tmp kept its sticky mode; COPY to /bin/hello followed the
    // bin -> usr/bin link instead of replacing it.
    assert_eq!(meta(&t, "tmp").0, 0o1777);
    assert_eq!(read(&t, "usr/bin/hello").as_deref(), Some("hi there"));
    assert!(t
        .lookup(Path::new("bin"))
        .unwrap()
        .unwrap()
        .meta
        .file_type()
        .is_symlink());
    assert_eq!(read(&t, "usr/bin/sh").as_deref(), Some("#!"));
    assert_eq!(read(&t, "out/ran-1").as_deref(), Some("echo $GREETING"));

    let r = runner.last();
    assert_eq!(r.args, vec!["/bin/sh", "-c", "echo $GREETING"]);
    assert_eq!(r.workdir, "/app");
    assert_eq!(r.user, "");
    assert_eq!(r.lowers, 6);
    assert!(r.env.contains(&"GREETING=hello world".to_string()));
    assert!(r.env.contains(&"VERSION=1".to_string()), "{:?}", r.env);

    let c = cfg(&img);
    assert_eq!(c.working_dir().as_deref(), Some("/app"));
    assert_eq!(c.user().as_deref(), Some("app"));
    assert_eq!(c.stop_signal().as_deref(), Some("SIGINT"));
    assert_eq!(
        c.cmd().clone().unwrap(),
        vec!["serve".to_string(), "--port".into(), "80".into()]
    );
    let labels = c.labels().clone().unwrap();
    assert_eq!(labels.get("version").map(String::as_str), Some("1"));
    assert_eq!(labels.get("maintainer").map(String::as_str), Some("me"));
    let mut ports = c.exposed_ports().clone().unwrap();
    ports.sort();
    assert_eq!(ports, vec!["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
    assert_eq!(c.volumes().clone().unwrap(), vec!["/data"]);
    let env = c.env().clone().unwrap();
    assert!(env.contains(&"APP=/app".to_string()));
    assert!(
        !env.iter().any(|e| e.starts_with("VERSION=")),
        "ARG is not persisted"
    );

    // History: the base entry, then one per step but ARG.
    let history = img.config.history().clone().unwrap();
    assert_eq!(history.len(), 1 + 13);
    let empty: Vec<bool> = history[1..]
        .iter()
        .map(|h| h.empty_layer().unwrap_or(false))
        .collect();
    assert_eq!(
        empty,
        vec![true, false, false, false, false, false, false, true, true, true, true, true, true]
    );
    assert_eq!(img.config.rootfs().diff_ids().len(), 7);
}

#[test]
fn rebuild_uses_cache_and_changes_rebuild_from_that_step() {
    let f = fx();
    f.base();
    f.write("Containerfile", FULL);
    f.write("hello.txt", "hi there");
    f.write("dir/a", "A");
    let runner = FakeRunner::new(0);
    let (first, _) = f.build(&runner, &f.opts(Some("app:1")));
    let first = first.unwrap();
    let layers = f.layer_count();
    assert_eq!(runner.count(), 1);

    // Unchanged: every cached step hits, no layer, same image.
    let (second, events) = f.build(&runner, &f.opts(Some("app:2")));
    let second = second.unwrap();
    assert_eq!(hits(&events), 13);
    assert_eq!(runner.count(), 1, "RUN came from the cache");
    assert_eq!(f.layer_count(), layers);
    assert_eq!(second.id, first.id);
    assert_eq!(second.layers, first.layers);

    // A changed file under dir/ misses at `COPY dir/` and after it.
    f.write("dir/a", "changed");
    let (third, events) = f.build(&runner, &f.opts(Some("app:3")));
    let third = third.unwrap();
    assert_eq!(runner.count(), 2);
    // ENV, WORKDIR, COPY hello hit; the rest miss.
    assert_eq!(hits(&events), 3);
    assert_ne!(third.id, first.id);
    assert_eq!(third.layers[..3], first.layers[..3]);
    assert_ne!(third.layers[3], first.layers[3]);

    // A mode change is a change too.
    fs::set_permissions(f.ctx.join("dir/a"), fs::Permissions::from_mode(0o755)).unwrap();
    let (_, events) = f.build(&runner, &f.opts(None));
    assert_eq!(hits(&events), 3);

    // no_cache runs everything, but the result still lands in the cache.
    let mut opts = f.opts(None);
    opts.no_cache = true;
    let (_, events) = f.build(&runner, &opts);
    assert_eq!(hits(&events), 0);
    assert_eq!(runner.count(), 4);
    let (_, events) = f.build(&runner, &f.opts(None));
    assert_eq!(hits(&events), 13);

    // A build arg reaches RUN's env, so changing it misses at RUN.
    let mut opts = f.opts(None);
    opts.build_args = vec![("VERSION".into(), "2".into())];
    let (img, events) = f.build(&runner, &opts);
    let img = img.unwrap();
    assert_eq!(hits(&events), 6);
    assert!(runner.last().env.contains(&"VERSION=2".to_string()));
    assert_eq!(
        cfg(&img).labels().clone().unwrap().get("version").cloned(),
        Some("2".into())
    );
}

#[test]
fn cache_entries_with_missing_layers_are_ignored() {
    let f = fx();
    f.write("Containerfile", "FROM scratch\nRUN make\n");
    let runner = FakeRunner::new(0);
    f.build(&runner, &f.opts(None)).0.unwrap();
    let dir = f.store.root().join("build-cache");
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let text = fs::read_to_string(&p).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["layer"]["diff_id"] = format!("sha256:{}", "0".repeat(64)).into();
        fs::write(&p, v.to_string()).unwrap();
    }
    let (res, events) = f.build(&runner, &f.opts(None));
    res.unwrap();
    assert_eq!(hits(&events), 0);
    assert_eq!(runner.count(), 2);
}

#[test]
fn failed_run_reports_line_and_leaves_no_image() {
    let f = fx();
    f.write("Containerfile", "FROM scratch\nENV A=1\n\nRUN false\n");
    let runner = FakeRunner::new(3);
    let (res, events) = f.build(&runner, &f.opts(Some("bad:1")));
    let err = res.err().unwrap();
    assert_eq!(
        err.to_string(),
        "Containerfile:4: RUN: command exited with code 3"
    );
    assert!(events.contains(&BuildEvent::Output(b"ran 1\n".to_vec())));
    assert!(!events.iter().any(|e| matches!(e, BuildEvent::Done { .. })));
    assert!(f.store.resolve("bad:1").is_err());
    assert!(f.store.list().unwrap().is_empty());
    assert_eq!(
        fs::read_dir(f.store.root().join("tmp")).unwrap().count(),
        0,
        "temp dirs removed"
    );
    assert_eq!(f.layer_count(), 0);
}

#[test]
fn step_errors_name_file_line_and_path() {
    let f = fx();
    f.write("secret", "s");
    f.write(".dockerignore", "secret\nContainerfile\n");
    let cases: &[(&str, &str)] = &[
        (
            "FROM scratch\nCOPY ../etc/passwd /x",
            "Containerfile:2: COPY: source path \"../etc/passwd\" is outside the build context",
        ),
        (
            "FROM scratch\nCOPY missing /x",
            "Containerfile:2: COPY: \"missing\" not found in the build context or excluded by .dockerignore",
        ),
        (
            "FROM scratch\nCOPY secret /x",
            "Containerfile:2: COPY: \"secret\" not found in the build context or excluded by .dockerignore",
        ),
        (
            "FROM scratch\nCOPY Containerfile /x",
            "Containerfile:2: COPY: \"Containerfile\" not found in the build context or excluded by .dockerignore",
        ),
        (
            "FROM scratch\nCOPY a b /x",
            "Containerfile:2: COPY: with more than one source the destination must be a directory ending in /, got \"/x\"",
        ),
        (
            "FROM nope:1",
            "Containerfile:1: FROM: no such image: nope:1",
        ),
        (
            "FROM scratch\nCOPY --chown=www .dockerignore /x",
            "Containerfile:2: COPY: unable to find user \"www\" in /etc/passwd of the image",
        ),
        (
            "FROM scratch\nARG U=http://x/y\nADD $U /y",
            "Containerfile:3: ADD: remote source \"http://x/y\" is not supported; download it in a RUN step",
        ),
        (
            "FROM scratch\nENV X=${MISSING:?must be set}",
            "Containerfile:2: ENV: MISSING: must be set",
        ),
        (
            "FROM scratch\nEXPOSE 99999",
            "Containerfile:2: EXPOSE: invalid port \"99999\"",
        ),
        (
            "FROM scratch\nCOPY --chmod=999 .dockerignore /x",
            "Containerfile:2: COPY: invalid --chmod value \"999\": expected octal mode",
        ),
        (
            "FROM scratch\nSTOPSIGNAL SIGNOPE",
            "Containerfile:2: STOPSIGNAL: invalid signal \"SIGNOPE\"",
        ),
        ("FROM scratch\nFROB", "Containerfile:2: FROB: unknown instruction \"FROB\""),
    ];
    let runner = FakeRunner::new(0);
    for (text, want) in cases {
        f.write("Containerfile", text);
        let (res, _) = f.build(&runner, &f.opts(None));
        assert_eq!(
            res.err().map(|e| e.to_string()).as_deref(),
            Some(*want),
            "{text:?}"
        );
    }
    let mut opts = f.opts(None);
    opts.containerfile = PathBuf::from("Nope");
    let (res, _) = f.build(&runner, &opts);
    let msg = res.err().unwrap().to_string();
    assert!(msg.starts_with("reading ") && msg.contains("Nope"), "{msg}");
}

#[test]
fn dockerignore_filters_copy_of_context() {
    let f = fx();
    f.write(
        "Containerfile",
        "FROM scratch\nCOPY . /ctx/\nCOPY *.txt /txt/\n",
    );
    f.write(
        ".dockerignore",
        "Containerfile\nsecret*\nlogs\n!logs/keep.log\n",
    );
    f.write("a.txt", "a");
    f.write("secret.txt", "s");
    f.write("logs/1.log", "1");
    f.write("logs/keep.log", "k");
    symlink("a.txt", f.ctx.join("link")).unwrap();
    let runner = FakeRunner::new(0);
    let img = f.build(&runner, &f.opts(None)).0.unwrap();
    let t = f.tree(&img);
    let names = |p: &str| -> Vec<String> {
        t.read_dir(Path::new(p))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n.to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(names("ctx"), vec![".dockerignore", "a.txt", "link", "logs"]);
    assert_eq!(names("ctx/logs"), vec!["keep.log"]);
    assert_eq!(names("txt"), vec!["a.txt"]);
    let link = t.lookup(Path::new("ctx/link")).unwrap().unwrap();
    assert!(link.meta.file_type().is_symlink());
}

#[test]
fn multi_stage_copy_from() {
    let f = fx();
    f.write(
        "Containerfile",
        "ARG BASE=scratch\nFROM ${BASE} AS build\nRUN make\nFROM scratch AS other\nRUN other\n\
         FROM $BASE\nCOPY --from=build /out /dist/\nCOPY --from=1 /out/ran-2 /other\n",
    );
    let runner = FakeRunner::new(0);
    let img = f.build(&runner, &f.opts(Some("ms:1"))).0.unwrap();
    assert_eq!(img.layers.len(), 2);
    let t = f.tree(&img);
    assert_eq!(read(&t, "dist/ran-1").as_deref(), Some("make"));
    assert_eq!(read(&t, "other").as_deref(), Some("other"));
    assert!(
        read(&t, "out/ran-1").is_none(),
        "build stage's files stay there"
    );

    // FROM a previous stage continues from its state.
    f.write(
        "Containerfile",
        "FROM scratch AS one\nENV A=1\nRUN one\nFROM one\nRUN two\n",
    );
    let img = f.build(&runner, &f.opts(None)).0.unwrap();
    assert_eq!(img.layers.len(), 2);
    assert!(cfg(&img)
        .env()
        .clone()
        .unwrap()
        .contains(&"A=1".to_string()));
}

#[test]
fn copying_a_tree_onto_symlinked_dirs_keeps_the_links() {
    let f = fx();
    f.base();
    f.write("rootfs/bin/tool", "T");
    f.write("rootfs/etc/app.conf", "C");
    f.write("Containerfile", "FROM base:1\nCOPY rootfs/ /\n");
    let runner = FakeRunner::new(0);
    let img = f.build(&runner, &f.opts(None)).0.unwrap();
    let t = f.tree(&img);
    assert!(t
        .lookup(Path::new("bin"))
        .unwrap()
        .unwrap()
        .meta
        .file_type()
        .is_symlink());
    assert_eq!(read(&t, "usr/bin/tool").as_deref(), Some("T"));
    assert_eq!(read(&t, "usr/bin/sh").as_deref(), Some("#!"));
    assert_eq!(read(&t, "etc/app.conf").as_deref(), Some("C"));
    assert!(read(&t, "etc/passwd").is_some());
}

#[test]
fn copy_from_itself_is_an_error() {
    let f = fx();
    f.write("Containerfile", "FROM scratch AS a\nCOPY --from=a /x /y\n");
    let runner = FakeRunner::new(0);
    let err = f.build(&runner, &f.opts(None)).0.err().unwrap();
    assert_eq!(
        err.to_string(),
        "Containerfile:2: COPY: --from=a: a stage cannot copy from itself"
    );
}

#[test]
fn add_extracts_local_archives() {
    let f = fx();
    let tar = TarBuilder::new()
        .dir("pkg")
        .file_owned("pkg/tool", b"bin", 7, 0o750)
        .finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    fs::write(f.ctx.join("pkg.tar.gz"), gz.finish().unwrap()).unwrap();
    fs::write(f.ctx.join("plain.tar"), &tar).unwrap();
    f.write("notes.txt", "n");
    f.write(
        "Containerfile",
        "FROM scratch\nADD pkg.tar.gz /opt/\nADD plain.tar notes.txt /raw/\nCOPY plain.tar /copied/\n",
    );
    let runner = FakeRunner::new(0);
    let img = f.build(&runner, &f.opts(None)).0.unwrap();
    let t = f.tree(&img);
    assert_eq!(read(&t, "opt/pkg/tool").as_deref(), Some("bin"));
    assert_eq!(meta(&t, "opt/pkg/tool"), (0o750, 7, 7));
    assert_eq!(read(&t, "raw/pkg/tool").as_deref(), Some("bin"));
    assert_eq!(read(&t, "raw/notes.txt").as_deref(), Some("n"));
    assert!(
        t.lookup(Path::new("copied/plain.tar")).unwrap().is_some(),
        "COPY does not extract"
    );
}

#[test]
fn copy_destination_rules() {
    let f = fx();
    f.write("a", "A");
    f.write("d/x", "X");
    f.write(
        "Containerfile",
        "FROM scratch\nWORKDIR /w\nCOPY a renamed\nCOPY a .\nCOPY a /dir/\nCOPY d /dd\nCOPY d/ /w/\n\
         COPY a /w/sub\nCOPY a /w/sub2/\nCOPY a sub\n",
    );
    let runner = FakeRunner::new(0);
    let img = f.build(&runner, &f.opts(None)).0.unwrap();
    let t = f.tree(&img);
    assert_eq!(read(&t, "w/renamed").as_deref(), Some("A"));
    assert_eq!(read(&t, "w/a").as_deref(), Some("A"));
    assert_eq!(read(&t, "dir/a").as_deref(), Some("A"));
    assert_eq!(
        read(&t, "dd/x").as_deref(),
        Some("X"),
        "a dir's contents are copied"
    );
    assert_eq!(read(&t, "w/x").as_deref(), Some("X"));
    assert_eq!(read(&t, "w/sub").as_deref(), Some("A"));
    assert_eq!(read(&t, "w/sub2/a").as_deref(), Some("A"));
    // WORKDIR made /w, so it exists; no layer for a WORKDIR to an existing dir.
    assert_eq!(meta(&t, "w").0, 0o755);
}

#[test]
fn entrypoint_resets_inherited_cmd_only() {
    let f = fx();
    f.write(
        "Containerfile",
        "FROM scratch AS base\nCMD [\"base\"]\nFROM base\nENTRYPOINT [\"/e\"]\n\
         FROM base AS keep\nCMD [\"mine\"]\nENTRYPOINT /e2\n",
    );
    let runner = FakeRunner::new(0);
    let img = f.build(&runner, &f.opts(None)).0.unwrap();
    let c = cfg(&img);
    assert_eq!(c.cmd().clone(), Some(vec!["mine".to_string()]));
    assert_eq!(
        c.entrypoint().clone(),
        Some(vec!["/bin/sh".into(), "-c".into(), "/e2".into()])
    );
    f.write(
        "Containerfile",
        "FROM scratch AS base\nCMD [\"base\"]\nFROM base\nSHELL [\"/bin/bash\", \"-xc\"]\nENTRYPOINT /e\n",
    );
    let img = f.build(&runner, &f.opts(None)).0.unwrap();
    let c = cfg(&img);
    assert_eq!(c.cmd().clone(), None);
    assert_eq!(
        c.entrypoint().clone(),
        Some(vec!["/bin/bash".into(), "-xc".into(), "/e".into()])
    );
}

#[test]
fn unused_build_args_warn() {
    let f = fx();
    f.write("Containerfile", "FROM scratch\nARG USED\n");
    let mut opts = f.opts(None);
    opts.build_args = vec![("USED".into(), "1".into()), ("EXTRA".into(), "2".into())];
    let runner = FakeRunner::new(0);
    let (res, events) = f.build(&runner, &opts);
    res.unwrap();
    assert!(events.contains(&BuildEvent::Output(
        b"warning: build args were not consumed: EXTRA\n".to_vec()
    )));
}

#[test]
fn helpers() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(clean_abs("/a/./b/../c/"), "/a/c");
    assert_eq!(clean_abs("/../x"), "/x");
    assert_eq!(parse_ports("80"), Ok(vec!["80/tcp".to_string()]));
    assert_eq!(parse_ports("53/UDP"), Ok(vec!["53/udp".to_string()]));
    assert!(parse_ports("0").is_err());
    assert!(parse_ports("80/icmp").is_err());
    assert!(parse_ports("9-8").is_err());
    assert!(validate_signal("SIGTERM").is_ok());
    assert!(validate_signal("term").is_ok());
    assert!(validate_signal("9").is_ok());
    assert!(validate_signal("SIGRTMIN+3").is_ok());
    assert!(validate_signal("0").is_err());
}
