//! Containers on the real kernel, as root.
//!
//! `harness = false`: spawn_container must run in a single-threaded process
//! and libtest runs tests on threads, so this is a plain program that runs
//! its cases one after another on the main thread. Arguments filter cases
//! by substring (`cargo test -p berth-runtime --test container -- oom`).
//! Every case cleans up through Drop guards (cgroups, processes, dirs);
//! after each case the host mount table is checked for leftovers.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use berth_runtime::net::{ensure_bridge, remove_bridge, BridgeConfig};
use berth_runtime::{
    exec_in_container, spawn_container, BindMount, Cgroup, CgroupLimits, ContainerSpec, ExecSpec,
    NetworkSetup, RootfsSpec, RuntimeError,
};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

const CGROUP_PARENT: &str = "berth-rt-test";

type TestResult = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

// ---- fixture -----------------------------------------------------------------

/// A busybox root file system in a temporary directory.
struct Fixture {
    dir: PathBuf,
    rootfs: PathBuf,
    /// The same tree owned by the first id of the user-namespace mapping.
    userns_rootfs: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn build_rootfs(root: &Path) {
    for d in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/app", "var",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy /bin/busybox");
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = symlink("busybox", root.join("bin").join(applet));
        }
    }
    write(
        &root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    );
    write(
        &root.join("etc/group"),
        "root:x:0:\ntty:x:5:\nstaff:x:50:app\napp:x:1000:\nnogroup:x:65534:\n",
    );
    write(&root.join("etc/hosts"), "# image's own\n");
    std::fs::set_permissions(
        root.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
}

fn chown_tree(root: &Path, uid: u32) {
    for entry in walk(root) {
        let _ = nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &entry,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(uid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
    }
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            if let Ok(rd) = std::fs::read_dir(&p) {
                out.extend(rd.flatten().map(|e| e.path()));
            }
        }
        i += 1;
    }
    out
}

impl Fixture {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("berth-rt-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fx = Fixture {
            rootfs: dir.join("rootfs"),
            userns_rootfs: dir.join("rootfs-userns"),
            dir,
        };
        build_rootfs(&fx.rootfs);
        build_rootfs(&fx.userns_rootfs);
        chown_tree(&fx.userns_rootfs, 100_000);
        fx
    }

    /// A fresh container spec with its own upper/work/mountpoint dirs.
    fn spec(&self, args: &[&str]) -> ContainerSpec {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let id = format!("c{n}");
        let base = self.dir.join(&id);
        for d in ["upper", "work", "mnt"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        ContainerSpec {
            id: id.clone(),
            hostname: format!("host-{id}"),
            rootfs: RootfsSpec {
                lowerdirs: vec![self.rootfs.clone()],
                upperdir: base.join("upper"),
                workdir: base.join("work"),
                mountpoint: base.join("mnt"),
                volatile: false,
            },
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ],
            cwd: "/".to_string(),
            user: String::new(),
            mounts: vec![],
            network: NetworkSetup::None,
            userns: false,
            tty: false,
            extra_hosts: vec![],
        }
    }
}

// ---- running containers --------------------------------------------------------

/// Owns a container's cgroup and pid; Drop kills, reaps and removes.
struct Running {
    cgroup: Cgroup,
    pid: Option<i32>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = self.cgroup.kill_all(libc::SIGKILL);
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), None);
        }
        if let Err(e) = self.cgroup.remove() {
            eprintln!("cleanup: {e}");
        }
    }
}

impl Running {
    fn wait(&mut self) -> Status {
        let pid = self.pid.take().expect("running");
        loop {
            match waitpid(Pid::from_raw(pid), None) {
                Ok(WaitStatus::Exited(_, code)) => return Status::Exited(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Status::Signaled(sig as i32),
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => panic!("waitpid {pid}: {e}"),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Exited(i32),
    Signaled(i32),
}

struct Outcome {
    status: Status,
    out: String,
    oom_killed: bool,
    cgroup_dirs: Vec<PathBuf>,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().expect("pipe")
}

fn cgroup_name(spec: &ContainerSpec) -> String {
    format!("{CGROUP_PARENT}/{}-{}", spec.id, std::process::id())
}

/// Starts a container with stdout+stderr on a pipe; returns the guard and
/// the read end.
fn start(spec: &ContainerSpec, limits: &CgroupLimits) -> Result<(Running, File), RuntimeError> {
    let cgroup = Cgroup::create(&cgroup_name(spec), limits)?;
    let mut running = Running { cgroup, pid: None };
    let (r, w) = pipe();
    let devnull = File::open("/dev/null").unwrap();
    let spawned = spawn_container(
        spec,
        &running.cgroup,
        [devnull.as_raw_fd(), w.as_raw_fd(), w.as_raw_fd()],
    )?;
    running.pid = Some(spawned.pid);
    Ok((running, File::from(r)))
}

fn run_with(spec: &ContainerSpec, limits: &CgroupLimits) -> Result<Outcome, RuntimeError> {
    let (mut running, mut out) = start(spec, limits)?;
    let mut text = String::new();
    let _ = out.read_to_string(&mut text);
    let status = running.wait();
    let oom_killed = running.cgroup.oom_killed();
    let cgroup_dirs = running
        .cgroup
        .dirs()
        .iter()
        .map(|p| p.to_path_buf())
        .collect();
    drop(running);
    Ok(Outcome {
        status,
        out: text,
        oom_killed,
        cgroup_dirs,
    })
}

fn run(spec: &ContainerSpec) -> Result<Outcome, String> {
    run_with(spec, &CgroupLimits::default()).map_err(|e| format!("run {:?}: {e}", spec.args))
}

fn sh(fx: &Fixture, script: &str) -> ContainerSpec {
    fx.spec(&["sh", "-c", script])
}

fn expect_ok(o: &Outcome) -> TestResult {
    ensure!(
        o.status == Status::Exited(0),
        "status {:?}, output:\n{}",
        o.status,
        o.out
    );
    Ok(())
}

// ---- cases -------------------------------------------------------------------------

fn exit_codes(fx: &Fixture) -> TestResult {
    let o = run(&fx.spec(&["true"]))?;
    expect_ok(&o)?;
    let o = run(&sh(fx, "exit 3"))?;
    ensure!(o.status == Status::Exited(3), "exit 3 gave {:?}", o.status);
    // pid 1 ignores signals it has no handler for, even SIGKILL from
    // inside; a child killed by a signal shows in the shell's status.
    let o = run(&sh(fx, "kill -9 $$; sh -c 'kill -9 $$'; exit $?"))?;
    ensure!(
        o.status == Status::Exited(137),
        "kill -9 gave {:?}",
        o.status
    );
    for d in &o.cgroup_dirs {
        ensure!(!d.exists(), "cgroup {} left behind", d.display());
    }
    Ok(())
}

fn namespaces_hostname_pid1(fx: &Fixture) -> TestResult {
    let spec = sh(fx, "echo pid=$$; hostname; cat /etc/hostname; ls /sys/class/net; cat /sys/class/net/lo/operstate /sys/class/net/lo/flags; ps -o pid,comm | wc -l");
    let o = run(&spec)?;
    expect_ok(&o)?;
    let lines: Vec<&str> = o.out.lines().collect();
    ensure!(lines.first() == Some(&"pid=1"), "not pid 1: {}", o.out);
    ensure!(
        lines.get(1) == Some(&spec.hostname.as_str()),
        "hostname: {}",
        o.out
    );
    ensure!(
        lines.get(2) == Some(&spec.hostname.as_str()),
        "/etc/hostname: {}",
        o.out
    );
    ensure!(lines.get(3) == Some(&"lo"), "only lo expected: {}", o.out);
    // lo is up: IFF_UP (0x1) in its flags. operstate of lo is "unknown".
    let flags = lines
        .get(5)
        .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok());
    ensure!(flags.is_some_and(|f| f & 1 == 1), "lo not up: {}", o.out);
    // ps sees only sh, ps and wc (+ header).
    ensure!(
        lines.get(6) == Some(&"4"),
        "other processes visible: {}",
        o.out
    );
    Ok(())
}

fn masked_and_readonly_paths(fx: &Fixture) -> TestResult {
    // Only paths this kernel has (no /proc/kcore or /proc/sysrq-trigger here).
    let mut checks = Vec::new();
    for file in [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/interrupts",
        "/proc/sched_debug",
    ] {
        if Path::new(file).exists() {
            checks.push((format!("wc -c < {file}"), "0".to_string()));
        }
    }
    for dir in ["/proc/acpi", "/sys/firmware", "/proc/scsi"] {
        if Path::new(dir).exists() {
            checks.push((format!("ls -A {dir} | wc -l"), "0".to_string()));
            checks.push((
                format!("(touch {dir}/x) 2>/dev/null && echo writable || echo ro"),
                "ro".to_string(),
            ));
        }
    }
    for ro in [
        "/proc/sys/kernel/domainname",
        "/proc/sysrq-trigger",
        "/sys/kernel/uevent_helper",
    ] {
        if Path::new(ro).exists() {
            checks.push((
                format!("(echo x > {ro}) 2>/dev/null && echo writable || echo ro"),
                "ro".to_string(),
            ));
        }
    }
    for p in ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"] {
        if Path::new(p).exists() {
            checks.push((
                format!("grep ' {p} ' /proc/self/mountinfo | grep -c ' ro,'"),
                "1".to_string(),
            ));
        }
    }
    let script: Vec<&str> = checks.iter().map(|c| c.0.as_str()).collect();
    let o = run(&sh(fx, &script.join("; ")))?;
    expect_ok(&o)?;
    let lines: Vec<&str> = o.out.lines().map(str::trim).collect();
    let expected: Vec<&str> = checks.iter().map(|c| c.1.as_str()).collect();
    ensure!(
        lines == expected,
        "got {lines:?}, want {expected:?} for {script:?}"
    );
    Ok(())
}

fn dev_tree(fx: &Fixture) -> TestResult {
    let o = run(&sh(
        fx,
        "ls -l /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty | cut -c1-10 | sort -u; \
         readlink /dev/fd; readlink /dev/stdin; readlink /dev/ptmx; \
         head -c 4 /dev/zero | wc -c; echo hi > /dev/null && echo null-ok; \
         grep -E ' /dev/(pts|shm|mqueue) ' /proc/self/mountinfo | wc -l; \
         grep ' /dev/pts ' /proc/self/mountinfo | grep -c 'ptmxmode=666'",
    ))?;
    expect_ok(&o)?;
    let lines: Vec<&str> = o.out.lines().map(str::trim).collect();
    let expected = [
        "crw-rw-rw-",
        "/proc/self/fd",
        "/proc/self/fd/0",
        "pts/ptmx",
        "4",
        "null-ok",
        "3",
        "1",
    ];
    ensure!(lines == expected, "got {lines:?}, want {expected:?}");
    Ok(())
}

fn device_access(fx: &Fixture) -> TestResult {
    // CAP_MKNOD is in the default set: any node can be made, but only the
    // allow-listed ones opened. /dev/fuse (10:229) opens fine on the host
    // and is not on Docker's list; tun (10:200) is.
    let o = run(&sh(
        fx,
        "mknod /tmp/fuse c 10 229 && echo mknod-ok; \
         (exec 3</tmp/fuse) 2>/dev/null && echo fuse-open || echo fuse-denied; \
         mknod /tmp/tun c 10 200 && (exec 3<>/tmp/tun) 2>/dev/null && echo tun-open || echo tun-denied; \
         head -c 1 /dev/urandom | wc -c",
    ))?;
    expect_ok(&o)?;
    let lines: Vec<&str> = o.out.lines().map(str::trim).collect();
    ensure!(
        lines == ["mknod-ok", "fuse-denied", "tun-open", "1"],
        "got {lines:?}"
    );
    Ok(())
}

/// The cgroup v2 device filter (eBPF), tested on this hybrid host: the v1
/// devices rules are lifted so only the program attached to the cgroup2
/// directory decides.
fn device_access_v2_filter(fx: &Fixture) -> TestResult {
    let spec = sh(
        fx,
        "mknod /tmp/fuse c 10 229 && echo mknod-ok; \
         (exec 3</tmp/fuse) 2>/dev/null && echo fuse-open || echo fuse-denied; \
         mknod /tmp/tun c 10 200 && (exec 3<>/tmp/tun) 2>/dev/null && echo tun-open || echo tun-denied; \
         head -c 1 /dev/urandom | wc -c; echo x > /dev/null && echo null-ok",
    );
    let cgroup =
        Cgroup::create(&cgroup_name(&spec), &CgroupLimits::default()).map_err(|e| e.to_string())?;
    let mut running = Running { cgroup, pid: None };
    let dirs: Vec<PathBuf> = running
        .cgroup
        .dirs()
        .iter()
        .map(|p| p.to_path_buf())
        .collect();
    let Some(unified) = dirs
        .iter()
        .find(|d| d.starts_with("/sys/fs/cgroup/unified"))
    else {
        println!("    (no cgroup2 directory on this host: skipped)");
        return Ok(());
    };
    if let Some(devices) = dirs
        .iter()
        .find(|d| d.starts_with("/sys/fs/cgroup/devices"))
    {
        std::fs::write(devices.join("devices.allow"), "a").map_err(|e| e.to_string())?;
    }
    berth_runtime::devices::attach_default_filter(unified).map_err(|e| format!("attach: {e}"))?;
    let (r, w) = pipe();
    let devnull = File::open("/dev/null").unwrap();
    let spawned = spawn_container(
        &spec,
        &running.cgroup,
        [devnull.as_raw_fd(), w.as_raw_fd(), w.as_raw_fd()],
    )
    .map_err(|e| e.to_string())?;
    running.pid = Some(spawned.pid);
    drop(w);
    let mut out = String::new();
    File::from(r).read_to_string(&mut out).unwrap();
    let status = running.wait();
    ensure!(status == Status::Exited(0), "status {status:?}: {out}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    ensure!(
        lines == ["mknod-ok", "fuse-denied", "tun-open", "1", "null-ok"],
        "got {lines:?}"
    );
    Ok(())
}

fn capabilities_nnp_seccomp(fx: &Fixture) -> TestResult {
    let script = "grep -E '^(Cap[A-Za-z]+|NoNewPrivs|Seccomp):' /proc/self/status";
    let o = run(&sh(fx, script))?;
    expect_ok(&o)?;
    for want in [
        "CapInh:\t00000000a80425fb",
        "CapPrm:\t00000000a80425fb",
        "CapEff:\t00000000a80425fb",
        "CapBnd:\t00000000a80425fb",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        ensure!(
            o.out.lines().any(|l| l == want),
            "missing {want:?} in:\n{}",
            o.out
        );
    }
    // A non-root user ends with no effective or permitted capabilities.
    let mut spec = sh(fx, script);
    spec.user = "app".to_string();
    let o = run(&spec)?;
    expect_ok(&o)?;
    for want in [
        "CapPrm:\t0000000000000000",
        "CapEff:\t0000000000000000",
        "CapBnd:\t00000000a80425fb",
    ] {
        ensure!(
            o.out.lines().any(|l| l == want),
            "user app: missing {want:?} in:\n{}",
            o.out
        );
    }
    // seccomp: user namespaces need no capability, only the filter stops them.
    let o = run(&sh(fx, "unshare -U true 2>&1; echo rc=$?"))?;
    ensure!(
        o.out.contains("Operation not permitted") && o.out.contains("rc=1"),
        "unshare -U: {}",
        o.out
    );
    // ... and mount is refused even though we are root inside.
    let o = run(&sh(fx, "mount -t tmpfs t /tmp 2>&1; echo rc=$?"))?;
    ensure!(
        o.out.contains("rc=1") || o.out.contains("rc=255"),
        "mount: {}",
        o.out
    );
    Ok(())
}

fn user_cwd_env(fx: &Fixture) -> TestResult {
    let mut spec = sh(fx, "id; pwd; echo HOME=$HOME");
    spec.user = "app".to_string();
    spec.cwd = "/work/dir".to_string();
    let o = run(&spec)?;
    expect_ok(&o)?;
    let lines: Vec<&str> = o.out.lines().collect();
    ensure!(
        lines.first() == Some(&"uid=1000(app) gid=1000(app) groups=50(staff)"),
        "id: {}",
        o.out
    );
    ensure!(lines.get(1) == Some(&"/work/dir"), "cwd: {}", o.out);
    ensure!(lines.get(2) == Some(&"HOME=/home/app"), "home: {}", o.out);

    let mut spec = sh(fx, "id");
    spec.user = "4242:4343".to_string();
    let o = run(&spec)?;
    expect_ok(&o)?;
    // Like runc: no passwd entry, so no supplementary groups at all.
    ensure!(
        o.out.trim() == "uid=4242 gid=4343",
        "numeric user: {}",
        o.out
    );

    let mut spec = fx.spec(&["true"]);
    spec.user = "nobody-here".to_string();
    match run_with(&spec, &CgroupLimits::default()) {
        Err(RuntimeError::UserNotFound { .. }) => {}
        Err(e) => return Err(format!("unknown user: wrong error {e}")),
        Ok(o) => return Err(format!("unknown user ran: {:?}", o.status)),
    }
    Ok(())
}

fn exec_errors(fx: &Fixture) -> TestResult {
    let cases: [(&[&str], i32, &str); 4] = [
        (
            &["nope"],
            127,
            "exec: \"nope\": executable file not found in $PATH",
        ),
        (
            &["/nope"],
            127,
            "exec: \"/nope\": stat /nope: no such file or directory",
        ),
        (
            &["/etc/passwd"],
            126,
            "exec: \"/etc/passwd\": permission denied",
        ),
        (&["/etc"], 126, "exec: \"/etc\": permission denied"),
    ];
    for (args, code, message) in cases {
        match run_with(&fx.spec(args), &CgroupLimits::default()) {
            Err(e @ RuntimeError::Exec { .. }) => {
                ensure!(
                    e.exit_code() == code,
                    "{args:?}: code {} for {e}",
                    e.exit_code()
                );
                ensure!(e.to_string() == message, "{args:?}: message {e}");
            }
            Err(e) => return Err(format!("{args:?}: wrong error {e}")),
            Ok(o) => return Err(format!("{args:?} ran: {:?}", o.status)),
        }
    }
    Ok(())
}

fn etc_files(fx: &Fixture) -> TestResult {
    let mut spec = sh(fx, "cat /etc/hosts; echo ---; cat /etc/resolv.conf");
    spec.extra_hosts = vec![("db.local".to_string(), "10.1.2.3".to_string())];
    let o = run(&spec)?;
    expect_ok(&o)?;
    let (hosts, resolv) = o.out.split_once("---\n").ok_or("no separator")?;
    ensure!(
        hosts.starts_with("127.0.0.1\tlocalhost\n"),
        "hosts: {hosts}"
    );
    ensure!(hosts.contains("10.1.2.3\tdb.local\n"), "hosts: {hosts}");
    ensure!(
        !hosts.contains("image's own"),
        "image hosts not replaced: {hosts}"
    );
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    ensure!(
        resolv == berth_runtime::etc::resolv_conf(&host_resolv, false),
        "resolv.conf: {resolv:?}"
    );
    ensure!(
        !resolv.lines().any(|l| l.starts_with("nameserver 127.")),
        "loopback nameserver leaked: {resolv}"
    );
    // Written into the container's own upper dir, never into the image.
    ensure!(
        spec.rootfs.upperdir.join("etc/hosts").exists(),
        "hosts not in upperdir"
    );
    ensure!(
        std::fs::read_to_string(fx.rootfs.join("etc/hosts")).unwrap() == "# image's own\n",
        "image changed"
    );
    Ok(())
}

fn bind_mounts(fx: &Fixture) -> TestResult {
    let ro = fx.dir.join("vol-ro");
    let rw = fx.dir.join("vol-rw");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    write(&ro.join("f"), "from-host\n");
    let file = fx.dir.join("single-file");
    write(&file, "one file\n");
    let mut spec = sh(
        fx,
        "cat /data/f; touch /data/x 2>/dev/null && echo ro-broken || echo ro-ok; \
         echo written > /rw/nested/y && echo rw-ok; cat /etc/single; \
         grep -c ' /data ' /proc/self/mountinfo",
    );
    spec.mounts = vec![
        BindMount {
            source: ro.clone(),
            destination: "/data".to_string(),
            read_only: true,
        },
        BindMount {
            source: rw.clone(),
            destination: "/rw/./nested/".to_string(),
            read_only: false,
        },
        BindMount {
            source: file,
            destination: "/etc/single".to_string(),
            read_only: true,
        },
    ];
    let o = run(&spec)?;
    expect_ok(&o)?;
    let lines: Vec<&str> = o.out.lines().collect();
    ensure!(
        lines == ["from-host", "ro-ok", "rw-ok", "one file", "1"],
        "got {lines:?}"
    );
    ensure!(
        std::fs::read_to_string(rw.join("y")).ok().as_deref() == Some("written\n"),
        "rw write not visible on host"
    );
    ensure!(!ro.join("x").exists(), "ro volume written");
    // A symlink in the image cannot redirect a mount to the host.
    let mut spec = fx.spec(&["true"]);
    let upper = &spec.rootfs.upperdir;
    symlink("/", upper.join("escape")).unwrap();
    spec.mounts = vec![BindMount {
        source: ro.clone(),
        destination: "/escape/tmp/berth-escape-test".to_string(),
        read_only: true,
    }];
    let o = run(&spec)?;
    expect_ok(&o)?;
    ensure!(
        !Path::new("/tmp/berth-escape-test").exists(),
        "bind target escaped to the host"
    );
    Ok(())
}

fn oom_kill(fx: &Fixture) -> TestResult {
    let limits = CgroupLimits {
        memory_bytes: Some(16 << 20),
        ..Default::default()
    };
    // The OOM victim is the process holding the memory: pid 1 itself.
    let o = run_with(&fx.spec(&["tail", "-c", "64m", "/dev/zero"]), &limits)
        .map_err(|e| e.to_string())?;
    ensure!(
        o.status == Status::Signaled(libc::SIGKILL),
        "status {:?} out {}",
        o.status,
        o.out
    );
    ensure!(o.oom_killed, "oom_killed() is false");
    // The brief's pipeline: tail dies, sh reports 128+9.
    let o =
        run_with(&sh(fx, "head -c 64m /dev/zero | tail"), &limits).map_err(|e| e.to_string())?;
    // The kernel usually picks tail (sh then exits 128+9); under memory
    // pressure from elsewhere it may pick sh itself.
    ensure!(
        matches!(
            o.status,
            Status::Exited(137) | Status::Signaled(libc::SIGKILL)
        ),
        "pipeline status {:?}",
        o.status
    );
    ensure!(o.oom_killed, "pipeline: oom_killed() is false");
    // Under the limit nothing is killed.
    let o = run_with(
        &sh(fx, "head -c 4m /dev/zero | tail -c 1m | wc -c"),
        &limits,
    )
    .map_err(|e| e.to_string())?;
    expect_ok(&o)?;
    ensure!(!o.oom_killed, "oom_killed() without an OOM");
    Ok(())
}

fn pids_limit(fx: &Fixture) -> TestResult {
    let limits = CgroupLimits {
        pids_max: Some(5),
        ..Default::default()
    };
    let o = run_with(
        &sh(fx, "for i in 1 2 3 4 5 6 7 8; do sleep 2 & done; echo done"),
        &limits,
    )
    .map_err(|e| e.to_string())?;
    ensure!(o.out.contains("can't fork"), "no fork failure: {}", o.out);
    Ok(())
}

fn cpu_limit(fx: &Fixture) -> TestResult {
    let limits = CgroupLimits {
        cpu_quota_us: Some(20_000),
        ..Default::default()
    };
    let spec = fx.spec(&["sh", "-c", "while :; do :; done"]);
    let (running, _out) = start(&spec, &limits).map_err(|e| e.to_string())?;
    let pid = running.pid.unwrap();
    let ticks = |pid: i32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map(|r| r.1).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
    };
    let t0 = ticks(pid);
    std::thread::sleep(Duration::from_millis(1000));
    let used = ticks(pid) - t0; // clock ticks (100 Hz): 20% of a CPU is ~20
    drop(running);
    ensure!(used <= 35, "cpu quota not enforced: {used} ticks in 1s");
    ensure!(used >= 5, "cpu starved: {used} ticks");
    Ok(())
}

fn exec_into_running(fx: &Fixture) -> TestResult {
    let spec = fx.spec(&["sleep", "30"]);
    let (mut running, _out) = start(&spec, &CgroupLimits::default()).map_err(|e| e.to_string())?;
    let target = running.pid.unwrap();
    let (r, w) = pipe();
    let devnull = File::open("/dev/null").unwrap();
    let exec = ExecSpec {
        target_pid: target,
        args: vec![
            "sh".into(),
            "-c".into(),
            "echo $$; hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; id -u; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; pwd; cat /proc/self/cgroup | grep -c rt-test".into(),
        ],
        env: vec!["PATH=/bin".into()],
        cwd: "/tmp".into(),
        user: "".into(),
        tty: false,
    };
    let pid = exec_in_container(
        &exec,
        &running.cgroup,
        [devnull.as_raw_fd(), w.as_raw_fd(), w.as_raw_fd()],
    )
    .map_err(|e| format!("exec: {e}"))?;
    drop(w);
    let mut out = String::new();
    File::from(r).read_to_string(&mut out).unwrap();
    let status = waitpid(Pid::from_raw(pid), None).map_err(|e| e.to_string())?;
    ensure!(
        matches!(status, WaitStatus::Exited(_, 0)),
        "exec status {status:?}: {out}"
    );
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines
            .first()
            .is_some_and(|p| p.parse::<i32>().is_ok_and(|p| p > 1)),
        "exec pid: {out}"
    );
    ensure!(
        lines.get(1) == Some(&spec.hostname.as_str()),
        "exec hostname: {out}"
    );
    ensure!(lines.get(2) == Some(&"sleep 30 "), "exec /proc/1: {out}");
    ensure!(lines.get(3) == Some(&"0"), "exec uid: {out}");
    ensure!(
        lines.get(4) == Some(&"CapEff:\t00000000a80425fb"),
        "exec caps: {out}"
    );
    ensure!(lines.get(5) == Some(&"NoNewPrivs:\t1"), "exec nnp: {out}");
    ensure!(lines.get(6) == Some(&"Seccomp:\t2"), "exec seccomp: {out}");
    ensure!(lines.get(7) == Some(&"/tmp"), "exec cwd: {out}");
    let in_cgroup = lines
        .get(8)
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    ensure!(in_cgroup >= 3, "exec not in the container cgroup: {out}");
    // Our own children are back in our pid namespace.
    let me = std::fs::read_link("/proc/self/ns/pid").unwrap();
    ensure!(
        std::fs::read_link("/proc/self/ns/pid_for_children").unwrap() == me,
        "pid_for_children not restored"
    );
    // Exec errors are reported like for run.
    let mut bad = exec.clone();
    bad.args = vec!["nope".into()];
    match exec_in_container(&bad, &running.cgroup, [devnull.as_raw_fd(), 1, 2]) {
        Err(e) => ensure!(e.exit_code() == 127, "exec nope: {e}"),
        Ok(pid) => return Err(format!("exec nope ran as {pid}")),
    }
    running
        .cgroup
        .kill_all(libc::SIGKILL)
        .map_err(|e| e.to_string())?;
    let status = running.wait();
    ensure!(
        status == Status::Signaled(libc::SIGKILL),
        "after kill_all: {status:?}"
    );
    Ok(())
}

fn tty(fx: &Fixture) -> TestResult {
    let pty = nix::pty::openpty(None, None).map_err(|e| e.to_string())?;
    let mut spec = sh(fx, "[ -t 0 ] && [ -t 1 ] && echo tty-yes; ls -l /dev/console | cut -c1; ps -o pid,tty | tail -n +2 | head -1");
    spec.tty = true;
    let cgroup =
        Cgroup::create(&cgroup_name(&spec), &CgroupLimits::default()).map_err(|e| e.to_string())?;
    let mut running = Running { cgroup, pid: None };
    let slave = pty.slave.as_raw_fd();
    let spawned = spawn_container(&spec, &running.cgroup, [slave, slave, slave])
        .map_err(|e| e.to_string())?;
    running.pid = Some(spawned.pid);
    drop(pty.slave);
    let mut out = Vec::new();
    let mut master = File::from(pty.master);
    // Reading the master ends with EIO once the slave side is closed.
    let _ = master.read_to_end(&mut out);
    let status = running.wait();
    let out = String::from_utf8_lossy(&out).replace('\r', "");
    ensure!(status == Status::Exited(0), "status {status:?}: {out}");
    ensure!(out.lines().next() == Some("tty-yes"), "not a tty: {out}");
    ensure!(out.lines().nth(1) == Some("c"), "/dev/console: {out}");
    Ok(())
}

fn network_host(fx: &Fixture) -> TestResult {
    let mut spec = sh(fx, "ls /sys/class/net | wc -l; readlink /proc/self/ns/net");
    spec.network = NetworkSetup::Host;
    let o = run(&spec)?;
    expect_ok(&o)?;
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    ensure!(
        o.out.lines().nth(1) == Some(host_ns.to_string_lossy().as_ref()),
        "not in the host netns: {}",
        o.out
    );
    Ok(())
}

/// A bridge of our own, removed on Drop.
struct TestBridge(BridgeConfig);
impl Drop for TestBridge {
    fn drop(&mut self) {
        if let Err(e) = remove_bridge(&self.0) {
            eprintln!("cleanup of bridge {}: {e}", self.0.name);
        }
    }
}

fn network_bridge(fx: &Fixture) -> TestResult {
    let third = (std::process::id() % 200) as u8 + 20;
    let bridge = TestBridge(BridgeConfig {
        name: format!("brt{}", std::process::id() % 100_000),
        gateway: Ipv4Addr::new(10, 214, third, 1),
        prefix_len: 24,
    });
    let forward_before =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    ensure_bridge(&bridge.0).map_err(|e| format!("ensure_bridge: {e}"))?;
    let addr = Ipv4Addr::new(10, 214, third, 7);
    let mut spec = sh(
        fx,
        &format!(
            "ip -4 -o addr show eth0 | awk '{{print $4}}'; ip route | grep default; grep -c '{addr}' /etc/hosts; ping -c1 -W2 -q {} >/dev/null && echo ping-ok",
            bridge.0.gateway
        ),
    );
    spec.network = NetworkSetup::Bridge(bridge.0.attachment(addr));
    let (mut running, mut out) =
        start(&spec, &CgroupLimits::default()).map_err(|e| e.to_string())?;
    let mut text = String::new();
    let _ = out.read_to_string(&mut text);
    let status = running.wait();
    drop(running);
    if forward_before.trim() == "0" {
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "0\n");
    }
    ensure!(status == Status::Exited(0), "status {status:?}: {text}");
    let lines: Vec<&str> = text.lines().collect();
    ensure!(
        lines.first() == Some(&format!("{addr}/24").as_str()),
        "eth0 address: {text}"
    );
    ensure!(
        lines
            .get(1)
            .is_some_and(|l| l.contains(&bridge.0.gateway.to_string())),
        "default route: {text}"
    );
    ensure!(
        lines.get(2) == Some(&"1"),
        "own address in /etc/hosts: {text}"
    );
    ensure!(
        lines.get(3) == Some(&"ping-ok"),
        "gateway unreachable: {text}"
    );
    Ok(())
}

fn user_namespace(fx: &Fixture) -> TestResult {
    let mut spec = sh(
        fx,
        "cat /proc/self/uid_map /proc/self/gid_map | tr -s ' '; id -u; hostname; \
         grep -E '^(CapEff|Seccomp):' /proc/self/status; touch /newfile && echo write-ok; \
         wc -c < /proc/keys",
    );
    spec.userns = true;
    spec.rootfs.lowerdirs = vec![fx.userns_rootfs.clone()];
    let owner = nix::unistd::Uid::from_raw(100_000);
    let group = nix::unistd::Gid::from_raw(100_000);
    for d in [&spec.rootfs.upperdir, &spec.rootfs.workdir] {
        nix::unistd::chown(d, Some(owner), Some(group)).map_err(|e| e.to_string())?;
    }
    let o = run(&spec)?;
    expect_ok(&o)?;
    let lines: Vec<&str> = o.out.lines().map(str::trim).collect();
    let want = [
        "0 100000 65536",
        "0 100000 65536",
        "0",
        spec.hostname.as_str(),
        "CapEff:\t00000000a80425fb",
        "Seccomp:\t2",
        "write-ok",
        "0",
    ];
    ensure!(lines == want, "got {lines:?}");
    // Files created inside belong to the mapped host uid.
    let meta =
        std::fs::metadata(spec.rootfs.upperdir.join("newfile")).map_err(|e| e.to_string())?;
    let owner = std::os::unix::fs::MetadataExt::uid(&meta);
    ensure!(owner == 100_000, "owner {owner}");

    // exec joins the user namespace too, and resolves users there.
    let mut spec = fx.spec(&["sleep", "30"]);
    spec.userns = true;
    spec.rootfs.lowerdirs = vec![fx.userns_rootfs.clone()];
    let (uid, gid) = (
        nix::unistd::Uid::from_raw(100_000),
        nix::unistd::Gid::from_raw(100_000),
    );
    for d in [&spec.rootfs.upperdir, &spec.rootfs.workdir] {
        nix::unistd::chown(d, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    }
    let (running, _out) = start(&spec, &CgroupLimits::default()).map_err(|e| e.to_string())?;
    let (r, w) = pipe();
    let exec = ExecSpec {
        target_pid: running.pid.unwrap(),
        args: vec![
            "sh".into(),
            "-c".into(),
            "id -u; cat /proc/self/uid_map | tr -s ' '".into(),
        ],
        env: vec!["PATH=/bin".into()],
        cwd: String::new(),
        user: "app".into(),
        tty: false,
    };
    let devnull = File::open("/dev/null").unwrap();
    let pid = exec_in_container(
        &exec,
        &running.cgroup,
        [devnull.as_raw_fd(), w.as_raw_fd(), w.as_raw_fd()],
    )
    .map_err(|e| format!("exec: {e}"))?;
    drop(w);
    let mut out = String::new();
    File::from(r).read_to_string(&mut out).unwrap();
    let status = waitpid(Pid::from_raw(pid), None).map_err(|e| e.to_string())?;
    ensure!(
        matches!(status, WaitStatus::Exited(_, 0)),
        "exec status {status:?}: {out}"
    );
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    ensure!(
        lines == ["1000", "0 100000 65536"],
        "exec in userns: {lines:?}"
    );
    drop(running);
    Ok(())
}

fn setup_errors(fx: &Fixture) -> TestResult {
    let mut spec = fx.spec(&["true"]);
    spec.rootfs.lowerdirs = vec![fx.dir.join("does-not-exist")];
    match run_with(&spec, &CgroupLimits::default()) {
        Err(e) => ensure!(
            e.to_string().contains("does-not-exist"),
            "overlay error does not name the path: {e}"
        ),
        Ok(_) => return Err("missing lowerdir accepted".into()),
    }
    let mut spec = fx.spec(&["true"]);
    spec.mounts = vec![BindMount {
        source: fx.dir.join("no-such-volume"),
        destination: "/v".into(),
        read_only: false,
    }];
    match run_with(&spec, &CgroupLimits::default()) {
        Err(e) => ensure!(e.to_string().contains("no-such-volume"), "bind error: {e}"),
        Ok(_) => return Err("missing volume accepted".into()),
    }
    let mut spec = fx.spec(&["true"]);
    spec.mounts = vec![BindMount {
        source: fx.rootfs.clone(),
        destination: "relative".into(),
        read_only: false,
    }];
    ensure!(
        matches!(
            run_with(&spec, &CgroupLimits::default()),
            Err(RuntimeError::InvalidSpec { .. })
        ),
        "relative destination accepted"
    );
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Not a pass/fail test: prints spawn-to-exit and full-lifecycle times of
/// `true` over 30 runs.
fn timing_true(fx: &Fixture) -> TestResult {
    const RUNS: usize = 30;
    let devnull = File::open("/dev/null").unwrap();
    let fd = devnull.as_raw_fd();
    let mut spawn_to_exit = Vec::with_capacity(RUNS);
    let mut lifecycle = Vec::with_capacity(RUNS);
    let mut spawn_only = Vec::with_capacity(RUNS);
    for _ in 0..RUNS + 3 {
        let spec = fx.spec(&["true"]);
        let t0 = Instant::now();
        let cgroup = Cgroup::create(&cgroup_name(&spec), &CgroupLimits::default())
            .map_err(|e| e.to_string())?;
        let mut running = Running { cgroup, pid: None };
        let t1 = Instant::now();
        let spawned =
            spawn_container(&spec, &running.cgroup, [fd, fd, fd]).map_err(|e| e.to_string())?;
        let t2 = Instant::now();
        running.pid = Some(spawned.pid);
        let status = running.wait();
        let t3 = Instant::now();
        drop(running);
        let t4 = Instant::now();
        ensure!(status == Status::Exited(0), "true: {status:?}");
        spawn_only.push((t2 - t1).as_secs_f64() * 1e3);
        spawn_to_exit.push((t3 - t1).as_secs_f64() * 1e3);
        lifecycle.push((t4 - t0).as_secs_f64() * 1e3);
        let _ = std::fs::remove_dir_all(spec.rootfs.upperdir.parent().unwrap());
    }
    // Drop the warm-up runs.
    let (a, b, c) = (
        median(&mut spawn_only[3..].to_vec()),
        median(&mut spawn_to_exit[3..].to_vec()),
        median(&mut lifecycle[3..].to_vec()),
    );
    println!("    timing over {RUNS} runs of `true` (median): spawn_container {a:.2} ms, spawn-to-exit {b:.2} ms, cgroup create + spawn + exit + cgroup remove {c:.2} ms");
    Ok(())
}

// ---- driver --------------------------------------------------------------------------

fn mount_lines() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .map(|l| {
            // Drop the mount id and parent id (fields 1-2), which are the
            // only things that differ for an otherwise identical table.
            l.splitn(3, ' ').nth(2).unwrap_or(l).to_string()
        })
        .collect()
}

fn cleanup_cgroup_parents() {
    for h in ["memory", "cpu", "pids", "freezer", "devices", "unified", ""] {
        let dir = Path::new("/sys/fs/cgroup").join(h).join(CGROUP_PARENT);
        let _ = std::fs::remove_dir(dir);
    }
}

type Case = (&'static str, fn(&Fixture) -> TestResult);

fn main() {
    let filters: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a: OsString| a.to_string_lossy().into_owned())
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !nix::unistd::geteuid().is_root() {
        println!("container tests skipped: need root");
        return;
    }
    let cases: &[Case] = &[
        ("exit_codes", exit_codes),
        ("namespaces_hostname_pid1", namespaces_hostname_pid1),
        ("masked_and_readonly_paths", masked_and_readonly_paths),
        ("dev_tree", dev_tree),
        ("device_access", device_access),
        ("device_access_v2_filter", device_access_v2_filter),
        ("capabilities_nnp_seccomp", capabilities_nnp_seccomp),
        ("user_cwd_env", user_cwd_env),
        ("exec_errors", exec_errors),
        ("etc_files", etc_files),
        ("bind_mounts", bind_mounts),
        ("oom_kill", oom_kill),
        ("pids_limit", pids_limit),
        ("cpu_limit", cpu_limit),
        ("exec_into_running", exec_into_running),
        ("tty", tty),
        ("network_host", network_host),
        ("network_bridge", network_bridge),
        ("user_namespace", user_namespace),
        ("setup_errors", setup_errors),
        ("timing_true", timing_true),
    ];
    let fx = Fixture::new();
    let before = mount_lines();
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, case) in cases {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        ran += 1;
        let t = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| case(&fx)))
            .unwrap_or_else(|_| Err("panicked".to_string()));
        // Nothing may stay mounted on the host.
        let after = mount_lines();
        let leaked: Vec<&String> = after
            .difference(&before)
            .filter(|l| {
                l.contains(fx.dir.to_string_lossy().as_ref())
                    || l.contains(" - overlay ")
                    || l.contains(" - proc ")
                    || l.contains(" - mqueue ")
                    || l.contains(" - devpts ")
            })
            .collect();
        let result = match (result, leaked.is_empty()) {
            (Ok(()), false) => Err(format!("mounts leaked to the host: {leaked:?}")),
            (r, _) => r,
        };
        match result {
            Ok(()) => println!("test {name} ... ok ({} ms)", t.elapsed().as_millis()),
            Err(e) => {
                println!("test {name} ... FAILED\n    {}", e.replace('\n', "\n    "));
                failed.push(*name);
            }
        }
    }
    let after = mount_lines();
    if after != before {
        println!(
            "note: host mount table changed during the run (other processes?): +{:?} -{:?}",
            after.difference(&before).collect::<Vec<_>>(),
            before.difference(&after).collect::<Vec<_>>()
        );
    }
    drop(fx);
    cleanup_cgroup_parents();
    println!("\n{} passed; {} failed", ran - failed.len(), failed.len());
    if !failed.is_empty() {
        println!("failed: {failed:?}");
        std::process::exit(1);
    }
}
