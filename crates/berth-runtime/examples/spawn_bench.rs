//! Container lifecycle benchmark: `true` in a busybox container, berth's
//! runtime side by side with runc when it is installed.
//!
//!     cargo run --release -p berth-runtime --example spawn_bench [RUNS]
//!
//! Needs root and /bin/busybox. Prints the median and p90 in milliseconds of
//! - spawn: spawn_container returning (the process has exec'd),
//! - spawn-to-exit: spawn_container + waitpid,
//! - lifecycle: cgroup create + spawn + wait + cgroup remove,
//! - teardown: dropping the keepalive (mount namespace teardown and the
//!   overlay's flush to disk), which the engine does off the exit path,
//! - runc: `runc run` of the same rootfs (bundle with config.json), which
//!   covers runc's own create/start/delete.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use berth_runtime::{
    spawn_container, Cgroup, CgroupLimits, ContainerSpec, NetworkSetup, RootfsSpec,
};

fn build_rootfs(root: &Path) {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy /bin/busybox");
    for applet in ["sh", "true"] {
        symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
}

fn stats(name: &str, v: &mut [f64]) {
    v.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!("{name:<40} {:>8.2} {:>8.2} {:>8.2}", p(0.5), p(0.9), v[0]);
}

fn runc_bundle(dir: &Path, rootfs: &Path) -> Option<PathBuf> {
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).ok()?;
    let ok = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()
        .ok()?
        .success();
    if !ok {
        return None;
    }
    let config = std::fs::read_to_string(bundle.join("config.json")).ok()?;
    let config = config
        .replace("\"terminal\": true", "\"terminal\": false")
        .replace("\"sh\"", "\"true\"")
        .replace(
            "\"path\": \"rootfs\"",
            &format!("\"path\": \"{}\"", rootfs.display()),
        );
    std::fs::write(bundle.join("config.json"), config).ok()?;
    Some(bundle)
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let dir = std::env::temp_dir().join(format!("berth-spawn-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rootfs = dir.join("rootfs");
    build_rootfs(&rootfs);
    let devnull = File::open("/dev/null").expect("/dev/null");
    let fd = devnull.as_raw_fd();

    let mut spawn = Vec::new();
    let mut to_exit = Vec::new();
    let mut lifecycle = Vec::new();
    let mut teardown = Vec::new();
    for i in 0..runs + 3 {
        let base = dir.join(format!("c{i}"));
        for d in ["upper", "work", "mnt"] {
            std::fs::create_dir_all(base.join(d)).expect("mkdir");
        }
        let spec = ContainerSpec {
            id: format!("c{i}"),
            hostname: format!("c{i}"),
            rootfs: RootfsSpec {
                lowerdirs: vec![rootfs.clone()],
                upperdir: base.join("upper"),
                workdir: base.join("work"),
                mountpoint: base.join("mnt"),
                volatile: false,
            },
            args: vec!["true".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: String::new(),
            mounts: vec![],
            network: NetworkSetup::None,
            userns: false,
            tty: false,
            extra_hosts: vec![],
        };
        let t0 = Instant::now();
        let cg =
            Cgroup::create(&format!("berth-bench/c{i}"), &CgroupLimits::default()).expect("cgroup");
        let t1 = Instant::now();
        let s = spawn_container(&spec, &cg, [fd, fd, fd]).expect("spawn");
        let t2 = Instant::now();
        let status =
            nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(s.pid), None).expect("wait");
        let t3 = Instant::now();
        cg.remove().expect("remove cgroup");
        let t4 = Instant::now();
        drop(s.keepalive);
        let t5 = Instant::now();
        assert!(
            matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)),
            "{status:?}"
        );
        let _ = std::fs::remove_dir_all(&base);
        if i >= 3 {
            spawn.push((t2 - t1).as_secs_f64() * 1e3);
            to_exit.push((t3 - t1).as_secs_f64() * 1e3);
            lifecycle.push((t4 - t0).as_secs_f64() * 1e3);
            teardown.push((t5 - t4).as_secs_f64() * 1e3);
        }
    }
    println!("{runs} runs of `true` (ms)                   median      p90      min");
    stats("berth spawn_container", &mut spawn);
    stats("berth spawn-to-exit", &mut to_exit);
    stats("berth cgroup+spawn+exit+cgroup remove", &mut lifecycle);
    stats("berth mount teardown (keepalive drop)", &mut teardown);

    if let Some(bundle) = runc_bundle(&dir, &rootfs) {
        let mut runc = Vec::new();
        for i in 0..runs + 3 {
            let t0 = Instant::now();
            let ok = Command::new("runc")
                .args(["run", "--bundle"])
                .arg(&bundle)
                .arg(format!("berth-bench-{}-{i}", std::process::id()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                println!("runc run failed; skipping runc");
                break;
            }
            if i >= 3 {
                runc.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        if !runc.is_empty() {
            stats("runc run (create+start+wait+delete)", &mut runc);
        }
    }
    for h in ["memory", "cpu", "pids", "devices", "unified", ""] {
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(h).join("berth-bench"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
