//! Measures youki's `libcontainer` (cgroupfs managers, no systemd) against `runc run` on a
//! busybox bundle running `true`: full lifecycle (create + start + wait + delete).
//!
//! Usage (as root): `libcontainer-bench [ITERS] [WARMUP]` (defaults 30 and 3).
//! `LCBENCH_LOG=debug` turns on libcontainer's tracing output on stderr.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{waitpid, WaitStatus};
use serde_json::Value;

const WORK: &str = "/tmp/lcbench";
const LC_ROOT: &str = "/tmp/lcbench/lc-root";
const RUNC_ROOT: &str = "/run/runc";
/// Explicit cgroup parent used by the "/lcbench/<id>" variants, so leftovers are easy to find.
const CG_PARENT: &str = "lcbench";

#[derive(Clone, Copy, PartialEq)]
enum Engine {
    Libcontainer,
    Runc,
}

#[derive(Clone, Copy, PartialEq)]
enum CgPath {
    /// Whatever `runc spec` produces: no `linux.cgroupsPath` at all.
    SpecDefault,
    /// `linux.cgroupsPath = "/lcbench/<id>"`.
    Explicit,
}

struct Variant {
    name: &'static str,
    engine: Engine,
    cg: CgPath,
    tag: &'static str,
}

#[derive(Default)]
struct Phases {
    create: Duration,
    start: Duration,
    wait: Duration,
    delete: Duration,
}

#[derive(Default)]
struct Stats {
    total: Vec<Duration>,
    phases: Vec<Phases>,
    failures: usize,
    errors: BTreeMap<String, usize>,
}

fn main() -> Result<()> {
    if std::env::var_os("LCBENCH_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("LCBENCH_LOG"))
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().collect();
    let iters: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(30);
    let warmup: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);

    let setup = libcontainer_cgroup_setup();
    eprintln!("cgroup setup seen by libcgroups: {setup}");

    // Start from scratch: bundles are rebuilt every run.
    if Path::new(WORK).exists() {
        fs::remove_dir_all(WORK)?;
    }
    fs::create_dir_all(WORK)?;

    let variants = [
        Variant {
            name: "libcontainer 0.7.0, spec-default cgroupsPath (unset)",
            engine: Engine::Libcontainer,
            cg: CgPath::SpecDefault,
            tag: "lcd",
        },
        Variant {
            name: "libcontainer 0.7.0, cgroupsPath=/lcbench/<id>",
            engine: Engine::Libcontainer,
            cg: CgPath::Explicit,
            tag: "lce",
        },
        Variant {
            name: "runc run, spec-default cgroupsPath (unset)",
            engine: Engine::Runc,
            cg: CgPath::SpecDefault,
            tag: "rcd",
        },
        Variant {
            name: "runc run, cgroupsPath=/lcbench/<id>",
            engine: Engine::Runc,
            cg: CgPath::Explicit,
            tag: "rce",
        },
    ];
    let mut stats: Vec<Stats> = variants.iter().map(|_| Stats::default()).collect();

    // Round-robin over variants so machine drift hits all of them equally.
    for i in 0..warmup + iters {
        for (v, st) in variants.iter().zip(stats.iter_mut()) {
            let id = format!("{}-{i}", v.tag);
            let bundle = PathBuf::from(WORK).join(format!("bundle-{}", v.tag));
            let res = prepare_bundle(&bundle, v.cg, &id).and_then(|()| match v.engine {
                Engine::Libcontainer => run_libcontainer(&bundle, &id),
                Engine::Runc => run_runc(&bundle, &id),
            });
            cleanup_one(v.engine, &id);
            if i < warmup {
                if let Err(e) = &res {
                    eprintln!("warm-up {i} {}: FAILED: {e:#}", v.name);
                }
                continue;
            }
            match res {
                Ok(p) => {
                    st.total.push(p.create + p.start + p.wait + p.delete);
                    st.phases.push(p);
                }
                Err(e) => {
                    st.failures += 1;
                    *st.errors.entry(format!("{e:#}")).or_default() += 1;
                }
            }
        }
    }

    println!("host cgroup setup (as detected by libcgroups): {setup}; iterations: {iters} after {warmup} warm-ups\n");
    println!("| what | median ms | p10 | p90 | failures |");
    println!("|---|---|---|---|---|");
    for (v, st) in variants.iter().zip(&stats) {
        let (m, p10, p90) = pct(&st.total);
        println!(
            "| {} | {m} | {p10} | {p90} | {}/{iters} |",
            v.name, st.failures
        );
    }
    println!("\nPer-phase medians (ms; runc run is one process so only its total is known):\n");
    println!("| what | create | start | wait | delete |");
    println!("|---|---|---|---|---|");
    for (v, st) in variants.iter().zip(&stats) {
        if v.engine != Engine::Libcontainer {
            continue;
        }
        let col = |f: fn(&Phases) -> Duration| pct(&st.phases.iter().map(f).collect::<Vec<_>>()).0;
        println!(
            "| {} | {} | {} | {} | {} |",
            v.name,
            col(|p| p.create),
            col(|p| p.start),
            col(|p| p.wait),
            col(|p| p.delete)
        );
    }
    for (v, st) in variants.iter().zip(&stats) {
        for (e, n) in &st.errors {
            println!("\nerror x{n} in `{}`:\n```\n{e}\n```", v.name);
        }
    }

    let mut leftovers = final_cleanup();
    // Bundles are rebuilt on every run; /run/runc did not exist before runc made it.
    let _ = fs::remove_dir_all(WORK);
    if fs::remove_dir(RUNC_ROOT).is_ok() {
        leftovers.push(format!("empty {RUNC_ROOT}"));
    }
    println!("\nleftovers removed by final cleanup: {leftovers:?}");
    Ok(())
}

fn libcontainer_cgroup_setup() -> String {
    // Same detection libcontainer's cgroup manager factory uses.
    let out = Command::new("stat")
        .args(["-f", "-c", "%T", "/sys/fs/cgroup", "/sys/fs/cgroup/unified"])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" + "),
        Err(e) => format!("unknown ({e})"),
    }
}

fn pct(v: &[Duration]) -> (String, String, String) {
    if v.is_empty() {
        return ("-".into(), "-".into(), "-".into());
    }
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    // Nearest-rank percentile: simple and exact enough for 30 samples.
    let at = |p: f64| {
        let idx = ((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1;
        format!("{:.1}", ms[idx])
    };
    let median = if ms.len() % 2 == 1 {
        ms[ms.len() / 2]
    } else {
        (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2.0
    };
    (format!("{median:.1}"), at(0.10), at(0.90))
}

/// busybox-static binary plus one symlink per applet, as `busybox --list-full` names them.
fn build_rootfs(rootfs: &Path) -> Result<()> {
    if rootfs.exists() {
        fs::remove_dir_all(rootfs)?;
    }
    fs::create_dir_all(rootfs.join("bin"))?;
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("copy /bin/busybox")?;
    let out = Command::new("/bin/busybox").arg("--list-full").output()?;
    if !out.status.success() {
        bail!("busybox --list-full failed");
    }
    for applet in String::from_utf8(out.stdout)?.lines() {
        let link = rootfs.join(applet);
        if link.exists() {
            continue;
        }
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent)?;
        }
        symlink("/bin/busybox", &link).with_context(|| format!("symlink {}", link.display()))?;
    }
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        fs::create_dir_all(rootfs.join(d))?;
    }
    Ok(())
}

/// `runc spec` output with args=["true"], terminal=false, and the cgroupsPath variant.
fn prepare_bundle(bundle: &Path, cg: CgPath, id: &str) -> Result<()> {
    let config = bundle.join("config.json");
    if !config.exists() {
        fs::create_dir_all(bundle)?;
        let st = Command::new("runc")
            .arg("spec")
            .current_dir(bundle)
            .status()?;
        if !st.success() {
            bail!("runc spec failed in {}", bundle.display());
        }
        // A real directory per bundle: runc rejects a symlinked rootfs.
        build_rootfs(&bundle.join("rootfs"))?;
    }
    let base = bundle.join("config.base.json");
    if !base.exists() {
        fs::rename(&config, &base)?;
    }
    let mut spec: Value = serde_json::from_slice(&fs::read(&base)?)?;
    // LCBENCH_ARGS (space separated) replaces `true` for one-off inspection runs.
    let argv: Vec<String> = match std::env::var("LCBENCH_ARGS") {
        Ok(a) => a.split_whitespace().map(str::to_string).collect(),
        Err(_) => vec!["true".to_string()],
    };
    spec["process"]["args"] = serde_json::json!(argv);
    spec["process"]["terminal"] = Value::Bool(false);
    if cg == CgPath::Explicit {
        spec["linux"]["cgroupsPath"] = Value::String(format!("/{CG_PARENT}/{id}"));
    }
    fs::write(&config, serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

fn run_libcontainer(bundle: &Path, id: &str) -> Result<Phases> {
    let mut p = Phases::default();
    let t = Instant::now();
    let mut c: Container = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(LC_ROOT)
        .context("with_root_path")?
        .validate_id()
        .context("validate_id")?
        .as_init(bundle)
        // No systemd here; on hybrid/legacy hosts libcgroups picks the v1 cgroupfs manager anyway.
        .with_systemd(false)
        // Foreground like `youki run` without -d (terminal=false, so no console socket needed).
        .with_detach(false)
        .build()
        .context("create (ContainerBuilder::build)")?;
    p.create = t.elapsed();

    let t = Instant::now();
    c.start().context("start")?;
    p.start = t.elapsed();

    let t = Instant::now();
    let pid = c.pid().context("no init pid after start")?;
    // The init process is cloned with CLONE_PARENT, so it is our child and we can reap it.
    match waitpid(pid, None).context("waitpid init")? {
        WaitStatus::Exited(_, 0) => {}
        other => bail!("container process ended with {other:?}"),
    }
    p.wait = t.elapsed();

    let t = Instant::now();
    c.delete(true).context("delete")?;
    p.delete = t.elapsed();
    Ok(p)
}

fn run_runc(bundle: &Path, id: &str) -> Result<Phases> {
    let t = Instant::now();
    let out = Command::new("runc")
        .args(["--root", RUNC_ROOT, "run", "-b"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(if std::env::var_os("LCBENCH_ARGS").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped())
        .output()?;
    let el = t.elapsed();
    if !out.status.success() {
        bail!(
            "runc run exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // runc run is one process: charge everything to "wait".
    Ok(Phases {
        wait: el,
        ..Default::default()
    })
}

/// Best effort: make sure a failed iteration leaves nothing behind for the next one.
fn cleanup_one(engine: Engine, id: &str) {
    match engine {
        Engine::Libcontainer => {
            let dir = Path::new(LC_ROOT).join(id);
            if dir.exists() {
                if let Ok(mut c) = Container::load(dir.clone()) {
                    let _ = c.delete(true);
                }
                let _ = fs::remove_dir_all(&dir);
            }
        }
        Engine::Runc => {
            if Path::new(RUNC_ROOT).join(id).exists() {
                let _ = Command::new("runc")
                    .args(["--root", RUNC_ROOT, "delete", "-f", id])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
    // Reap anything (e.g. an init whose start failed) so no zombies pile up.
    while let Ok(ws) = waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
        if ws == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Removes our libcontainer root, and cgroup dirs named after our ids or the lcbench parent.
fn final_cleanup() -> Vec<String> {
    let mut removed = Vec::new();
    if Path::new(LC_ROOT).exists() {
        if let Ok(rd) = fs::read_dir(LC_ROOT) {
            for e in rd.flatten() {
                removed.push(format!("state {}", e.path().display()));
            }
        }
        let _ = fs::remove_dir_all(LC_ROOT);
    }
    if let Ok(rd) = fs::read_dir(RUNC_ROOT) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if ["lcd-", "lce-", "rcd-", "rce-"]
                .iter()
                .any(|p| n.starts_with(p))
            {
                let _ = Command::new("runc").args(["delete", "-f", &n]).status();
                let _ = fs::remove_dir_all(e.path());
                removed.push(format!("runc state {n}"));
            }
        }
    }
    // Depth-first rmdir of matching cgroup dirs (rmdir only works on empty cgroups).
    let mut dirs = Vec::new();
    collect_cgroup_dirs(Path::new("/sys/fs/cgroup"), 0, &mut dirs);
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        if fs::remove_dir(&d).is_ok() {
            removed.push(format!("cgroup {}", d.display()));
        }
    }
    removed
}

fn is_ours(name: &str) -> bool {
    name == CG_PARENT
        || name.contains("youki")
        || ["lcd-", "lce-", "rcd-", "rce-"]
            .iter()
            .any(|p| name.starts_with(p))
}

fn collect_cgroup_dirs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > 4 {
        return;
    }
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if !ft.is_dir() {
            continue;
        }
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if depth >= 1 && is_ours(&name) {
            // Collect the subtree too: children must go first.
            let mut sub = Vec::new();
            collect_all(&p, &mut sub);
            out.extend(sub);
            out.push(p);
        } else {
            collect_cgroup_dirs(&p, depth + 1, out);
        }
    }
}

fn collect_all(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_all(&e.path(), out);
            out.push(e.path());
        }
    }
}
