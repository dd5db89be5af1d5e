//! Control groups on v1, hybrid and v2 hosts.
//!
//! A container's cgroup is one directory per hierarchy: on v1/hybrid hosts
//! `<root>/{memory,cpu,pids,devices}/<name>` (plus `freezer` on pure v1, plus
//! `<root>/unified/<name>` on hybrid hosts so `cgroup.kill` and
//! CLONE_INTO_CGROUP work), on v2 hosts the single `<root>/<name>`.
//!
//! File access goes through [`CgroupFs`] and the root is a parameter, so
//! the path and file logic is unit-tested against a fake tree.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::RuntimeError;

/// The host's cgroup filesystem root.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// CFS period for `cpu_quota_us`, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupMode {
    V1,
    Hybrid,
    V2,
}

impl fmt::Display for CgroupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupMode::V1 => "v1",
            CgroupMode::Hybrid => "hybrid",
            CgroupMode::V2 => "v2",
        })
    }
}

/// Detects the host's layout (cached: it does not change while we run).
pub fn detect_cgroup_mode() -> CgroupMode {
    static MODE: OnceLock<CgroupMode> = OnceLock::new();
    *MODE.get_or_init(|| detect_mode_at(Path::new(CGROUP_ROOT)))
}

fn detect_mode_at(root: &Path) -> CgroupMode {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
    let is_cgroup2 = |p: &Path| statfs(p).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC);
    if is_cgroup2(root) {
        CgroupMode::V2
    } else if is_cgroup2(&root.join("unified")) {
        CgroupMode::Hybrid
    } else {
        CgroupMode::V1
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupLimits {
    pub memory_bytes: Option<u64>,
    /// CPU time per 100_000us period (`--cpus 1.5` is 150_000).
    pub cpu_quota_us: Option<u64>,
    pub pids_max: Option<i64>,
}

/// The file operations the cgroup logic needs; [`RealFs`] on a host.
pub trait CgroupFs: fmt::Debug + Send + Sync {
    /// Creates one directory; Ok(false) if it already existed.
    fn mkdir(&self, path: &Path) -> io::Result<bool>;
    fn rmdir(&self, path: &Path) -> io::Result<()>;
    fn read(&self, path: &Path) -> io::Result<String>;
    /// Writes to an existing control file (never creates one).
    fn write(&self, path: &Path, data: &str) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    /// cgroup v2: attaches the default device filter (eBPF) to `dir`.
    fn attach_device_filter(&self, dir: &Path) -> io::Result<()>;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl CgroupFs for RealFs {
    fn mkdir(&self, path: &Path) -> io::Result<bool> {
        match std::fs::create_dir(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn write(&self, path: &Path, data: &str) -> io::Result<()> {
        use std::io::Write;
        // One write(2): cgroup files take a value per write call.
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .write_all(data.as_bytes())
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn attach_device_filter(&self, dir: &Path) -> io::Result<()> {
        crate::devices::attach_default_filter(dir)
    }
}

/// Where the cgroup filesystem is and how it is laid out.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    pub path: PathBuf,
    pub mode: CgroupMode,
    pub fs: Arc<dyn CgroupFs>,
}

impl CgroupRoot {
    /// The host's /sys/fs/cgroup with the detected mode.
    pub fn host() -> Self {
        CgroupRoot {
            path: PathBuf::from(CGROUP_ROOT),
            mode: detect_cgroup_mode(),
            fs: Arc::new(RealFs),
        }
    }
}

/// Docker's default device allow list (after denying everything): mknod
/// of anything, and read/write on the standard nodes, pty slaves and tun.
/// Everything else (disks, /dev/fuse, /dev/kmsg, ...) cannot be opened.
pub const DEVICE_ALLOW: [&str; 12] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",    // null
    "c 1:5 rwm",    // zero
    "c 1:7 rwm",    // full
    "c 1:8 rwm",    // random
    "c 1:9 rwm",    // urandom
    "c 5:0 rwm",    // tty
    "c 5:1 rwm",    // console
    "c 5:2 rwm",    // ptmx
    "c 136:* rwm",  // pts
    "c 10:200 rwm", // tun
];

/// The v2 controllers we enable for containers.
const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

#[derive(Debug, Clone)]
pub struct Cgroup {
    name: String,
    mode: CgroupMode,
    fs: Arc<dyn CgroupFs>,
    /// Directory holding memory.* files (v1 memory dir or the v2 dir).
    memory: Option<PathBuf>,
    cpu: Option<PathBuf>,
    pids: Option<PathBuf>,
    freezer: Option<PathBuf>,
    /// v1 device access control (Docker's default allow list).
    devices: Option<PathBuf>,
    /// A cgroup2 directory: the v2 dir, or the hybrid unified one.
    unified: Option<PathBuf>,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RuntimeError + 'a {
    move |e| RuntimeError::io(op, path, e)
}

fn validate_name(name: &str) -> Result<(), RuntimeError> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        || name.contains('\0');
    if bad {
        return Err(RuntimeError::InvalidSpec {
            what: "cgroup name",
            value: name.to_string(),
        });
    }
    Ok(())
}

impl Cgroup {
    /// Creates (or re-applies limits to) the host cgroup `name`.
    pub fn create(name: &str, limits: &CgroupLimits) -> Result<Self, RuntimeError> {
        Self::create_in(&CgroupRoot::host(), name, limits)
    }

    /// Opens an existing host cgroup.
    pub fn open(name: &str) -> Result<Self, RuntimeError> {
        Self::open_in(&CgroupRoot::host(), name)
    }

    /// Lays out the directories for `name` under `root` without touching
    /// the file system beyond checking which v1 hierarchies are mounted.
    fn layout(root: &CgroupRoot, name: &str) -> Result<Self, RuntimeError> {
        validate_name(name)?;
        let mut cg = Cgroup {
            name: name.to_string(),
            mode: root.mode,
            fs: root.fs.clone(),
            memory: None,
            cpu: None,
            pids: None,
            freezer: None,
            devices: None,
            unified: None,
        };
        match root.mode {
            CgroupMode::V2 => {
                let dir = root.path.join(name);
                cg.memory = Some(dir.clone());
                cg.cpu = Some(dir.clone());
                cg.pids = Some(dir.clone());
                cg.unified = Some(dir);
            }
            CgroupMode::V1 | CgroupMode::Hybrid => {
                let v1 = |ctrl: &str| {
                    let hier = root.path.join(ctrl);
                    root.fs.exists(&hier).then(|| hier.join(name))
                };
                cg.memory = v1("memory");
                cg.cpu = v1("cpu");
                cg.pids = v1("pids");
                cg.devices = v1("devices");
                if root.mode == CgroupMode::V1 {
                    // No cgroup.kill/cgroup.freeze without cgroup2: keep a
                    // freezer so kill_all can stop forks while it kills.
                    cg.freezer = v1("freezer");
                } else {
                    cg.unified = Some(root.path.join("unified").join(name));
                }
            }
        }
        Ok(cg)
    }

    pub fn create_in(
        root: &CgroupRoot,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<Self, RuntimeError> {
        let cg = Self::layout(root, name)?;
        let mut existed = false;
        if root.mode == CgroupMode::V2 {
            let created = cg.create_v2_tree(&root.path)?;
            existed |= !created;
            if let (true, Some(dir)) = (created, &cg.unified) {
                // Once per cgroup: attaching again would stack copies.
                cg.fs
                    .attach_device_filter(dir)
                    .map_err(io_err("attach device filter to", dir))?;
            }
        } else {
            for dir in cg.dirs() {
                existed |= !cg.mkdir_p(dir)?;
            }
        }
        cg.apply_limits(limits, existed)?;
        cg.apply_device_rules()?;
        Ok(cg)
    }

    pub fn open_in(root: &CgroupRoot, name: &str) -> Result<Self, RuntimeError> {
        let cg = Self::layout(root, name)?;
        if !cg.dirs().iter().any(|d| cg.fs.exists(d)) {
            return Err(RuntimeError::CgroupNotFound(name.to_string()));
        }
        Ok(cg)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn mode(&self) -> CgroupMode {
        self.mode
    }

    /// Every distinct directory of this cgroup, v1 ones first.
    pub fn dirs(&self) -> Vec<&Path> {
        let mut out: Vec<&Path> = Vec::with_capacity(5);
        for d in [
            &self.memory,
            &self.cpu,
            &self.pids,
            &self.freezer,
            &self.devices,
            &self.unified,
        ]
        .into_iter()
        .flatten()
        {
            if !out.contains(&d.as_path()) {
                out.push(d);
            }
        }
        out
    }

    /// The cgroup2 directory a child can be cloned into (CLONE_INTO_CGROUP).
    pub(crate) fn cgroup2_dir(&self) -> Option<&Path> {
        self.unified.as_deref()
    }

    /// Directories whose cgroup.procs must be written to join this cgroup
    /// when the cgroup2 one is joined at clone time.
    pub(crate) fn v1_dirs(&self) -> Vec<&Path> {
        let unified = self.unified.as_deref();
        self.dirs()
            .into_iter()
            .filter(|d| Some(*d) != unified)
            .collect()
    }

    /// mkdir -p; returns whether the leaf was created.
    fn mkdir_p(&self, dir: &Path) -> Result<bool, RuntimeError> {
        match self.fs.mkdir(dir) {
            Ok(created) => Ok(created),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent = dir
                    .parent()
                    .ok_or_else(|| RuntimeError::io("mkdir", dir, e))?;
                self.mkdir_p(parent)?;
                self.fs.mkdir(dir).map_err(io_err("mkdir", dir))
            }
            Err(e) => Err(RuntimeError::io("mkdir", dir, e)),
        }
    }

    /// v2: enables our controllers in every ancestor's subtree_control on
    /// the way down, then creates the leaf. Returns whether it was created.
    fn create_v2_tree(&self, root: &Path) -> Result<bool, RuntimeError> {
        let available = self
            .fs
            .read(&root.join("cgroup.controllers"))
            .map_err(io_err("read", &root.join("cgroup.controllers")))?;
        let enable: Vec<String> = V2_CONTROLLERS
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .map(|c| format!("+{c}"))
            .collect();
        let enable = enable.join(" ");
        let mut dir = root.to_path_buf();
        let components: Vec<&str> = self.name.split('/').collect();
        for (i, comp) in components.iter().enumerate() {
            if !enable.is_empty() {
                let ctl = dir.join("cgroup.subtree_control");
                self.fs
                    .write(&ctl, &enable)
                    .map_err(io_err("write", &ctl))?;
            }
            dir.push(comp);
            let created = self.fs.mkdir(&dir).map_err(io_err("mkdir", &dir))?;
            if i + 1 == components.len() {
                return Ok(created);
            }
        }
        Ok(false)
    }

    fn write(&self, dir: &Path, file: &str, value: &str) -> Result<(), RuntimeError> {
        let path = dir.join(file);
        self.fs.write(&path, value).map_err(io_err("write", &path))
    }

    /// Writes the limits; when `reset` (the cgroup already existed), a
    /// `None` limit is written as unlimited so re-creating is idempotent.
    fn apply_limits(&self, limits: &CgroupLimits, reset: bool) -> Result<(), RuntimeError> {
        // Docker's convention: 0 means "no limit" (and -1 for pids).
        let limits = CgroupLimits {
            memory_bytes: limits.memory_bytes.filter(|&b| b > 0),
            cpu_quota_us: limits.cpu_quota_us.filter(|&q| q > 0),
            pids_max: limits.pids_max.filter(|&n| n > 0),
        };
        let v2 = self.mode == CgroupMode::V2;
        if let Some(dir) = &self.memory {
            if limits.memory_bytes.is_some() || reset {
                if v2 {
                    let value = limits
                        .memory_bytes
                        .map_or("max".to_string(), |b| b.to_string());
                    self.write(dir, "memory.max", &value)?;
                    // Without swap accounting (or swap) the file is absent.
                    let swap = dir.join("memory.swap.max");
                    if self.fs.exists(&swap) {
                        let value = if limits.memory_bytes.is_some() {
                            "0"
                        } else {
                            "max"
                        };
                        self.write(dir, "memory.swap.max", value)?;
                    }
                } else {
                    let value = limits
                        .memory_bytes
                        .map_or("-1".to_string(), |b| b.to_string());
                    self.write_v1_memory(dir, &value)?;
                }
            }
        }
        if let Some(dir) = &self.cpu {
            if limits.cpu_quota_us.is_some() || reset {
                if v2 {
                    let quota = limits
                        .cpu_quota_us
                        .map_or("max".to_string(), |q| q.to_string());
                    self.write(dir, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
                } else {
                    // The period defaults to 100ms; only a reset rewrites it.
                    if reset {
                        self.write(dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                    }
                    let quota = limits
                        .cpu_quota_us
                        .map_or("-1".to_string(), |q| q.to_string());
                    self.write(dir, "cpu.cfs_quota_us", &quota)?;
                }
            }
        }
        if let Some(dir) = &self.pids {
            if limits.pids_max.is_some() || reset {
                let value = limits.pids_max.map_or("max".to_string(), |n| n.to_string());
                self.write(dir, "pids.max", &value)?;
            }
        }
        Ok(())
    }

    /// v1: memory.limit_in_bytes and, when swap accounting exists,
    /// memory.memsw.limit_in_bytes to the same value (no swap). The kernel
    /// insists memsw >= limit at every moment, so the write order depends
    /// on whether the limit grows or shrinks: try limit first, and if the
    /// kernel refuses, raise memsw first.
    fn write_v1_memory(&self, dir: &Path, value: &str) -> Result<(), RuntimeError> {
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        let has_memsw = self.fs.exists(&memsw);
        match self.write(dir, "memory.limit_in_bytes", value) {
            Ok(()) => {
                if has_memsw {
                    self.write(dir, "memory.memsw.limit_in_bytes", value)?;
                }
                Ok(())
            }
            Err(RuntimeError::Io { source, .. })
                if has_memsw && source.raw_os_error() == Some(libc::EINVAL) =>
            {
                self.write(dir, "memory.memsw.limit_in_bytes", value)?;
                self.write(dir, "memory.limit_in_bytes", value)
            }
            Err(e) => Err(e),
        }
    }

    /// v1 devices: deny everything, then allow what Docker allows. Without
    /// this, CAP_MKNOD (in the default set) would let the container's root
    /// create and open the host's disks. On v2 the same policy needs an
    /// eBPF device program, which is not implemented yet.
    fn apply_device_rules(&self) -> Result<(), RuntimeError> {
        let Some(dir) = &self.devices else {
            return Ok(());
        };
        self.write(dir, "devices.deny", "a")?;
        for rule in DEVICE_ALLOW {
            self.write(dir, "devices.allow", rule)?;
        }
        Ok(())
    }

    /// Moves `pid` (all its threads) into every hierarchy.
    pub fn add_pid(&self, pid: i32) -> Result<(), RuntimeError> {
        let pid = pid.to_string();
        for dir in self.dirs() {
            self.write(dir, "cgroup.procs", &pid)?;
        }
        Ok(())
    }

    /// The directory whose cgroup.procs lists every member.
    fn procs_dir(&self) -> Option<&Path> {
        self.unified
            .as_deref()
            .or(self.pids.as_deref())
            .or(self.memory.as_deref())
            .or(self.cpu.as_deref())
            .or(self.freezer.as_deref())
    }

    pub fn pids(&self) -> Result<Vec<i32>, RuntimeError> {
        let Some(dir) = self.procs_dir() else {
            return Ok(Vec::new());
        };
        let path = dir.join("cgroup.procs");
        match self.fs.read(&path) {
            Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(RuntimeError::io("read", path, e)),
        }
    }

    /// Whether the kernel OOM-killed a process of this cgroup.
    pub fn oom_killed(&self) -> bool {
        let Some(dir) = &self.memory else {
            return false;
        };
        let file = if self.mode == CgroupMode::V2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        self.fs
            .read(&dir.join(file))
            .ok()
            .and_then(|text| keyed_value(&text, "oom_kill"))
            .is_some_and(|n| n > 0)
    }

    pub fn memory_usage(&self) -> Option<u64> {
        let dir = self.memory.as_ref()?;
        let file = if self.mode == CgroupMode::V2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        self.fs.read(&dir.join(file)).ok()?.trim().parse().ok()
    }

    /// Signals every process. SIGKILL goes through cgroup.kill when a
    /// cgroup2 directory has it (atomic, fork-proof); otherwise processes
    /// are signalled one by one, and for SIGKILL the sweep repeats (with
    /// the v1 freezer holding forks still) until the cgroup is empty.
    pub fn kill_all(&self, signal: i32) -> Result<(), RuntimeError> {
        if signal == libc::SIGKILL {
            if let Some(dir) = &self.unified {
                let kill = dir.join("cgroup.kill");
                match self.fs.write(&kill, "1") {
                    Ok(()) => return Ok(()),
                    // Kernels before 5.14 have no cgroup.kill: sweep instead.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(RuntimeError::io("write", kill, e)),
                }
            }
        }
        if signal != libc::SIGKILL {
            for pid in self.pids()? {
                signal_pid(pid, signal)?;
            }
            return Ok(());
        }
        let frozen = self.freeze(true);
        let result = self.sweep_kill();
        if frozen {
            self.freeze(false);
        }
        result
    }

    fn sweep_kill(&self) -> Result<(), RuntimeError> {
        for _ in 0..100 {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            for pid in pids {
                signal_pid(pid, libc::SIGKILL)?;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// v1 freezer; returns whether the state was written.
    fn freeze(&self, frozen: bool) -> bool {
        let Some(dir) = &self.freezer else {
            return false;
        };
        let state = if frozen { "FROZEN" } else { "THAWED" };
        self.fs.write(&dir.join("freezer.state"), state).is_ok()
    }

    /// Removes the directories. Tasks that have just been killed can keep
    /// a cgroup busy for a moment, so EBUSY is retried for about a second;
    /// a directory that is already gone is fine.
    pub fn remove(&self) -> Result<(), RuntimeError> {
        const ATTEMPTS: u32 = 200;
        for dir in self.dirs() {
            let mut attempt = 0;
            loop {
                match self.fs.rmdir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        attempt += 1;
                        if attempt >= ATTEMPTS {
                            return Err(RuntimeError::CgroupBusy {
                                path: dir.to_path_buf(),
                                attempts: attempt,
                            });
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(RuntimeError::io("rmdir", dir, e)),
                }
            }
        }
        Ok(())
    }
}

fn signal_pid(pid: i32, signal: i32) -> Result<(), RuntimeError> {
    match nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::try_from(signal)
            .map_err(|e| RuntimeError::sys("kill", e.into()))?,
    ) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(RuntimeError::sys("kill", e.into())),
    }
}

/// Value of `key N` in a flat-keyed cgroup file (memory.events, oom_control).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// A tmp-dir-backed fake cgroupfs: mkdir also creates the interface
    /// files the kernel would, and writes to missing files fail like
    /// they do on a real cgroupfs.
    #[derive(Debug)]
    struct FakeFs {
        mode: CgroupMode,
        root: PathBuf,
        writes: Mutex<Vec<(PathBuf, String)>>,
        busy: Mutex<BTreeMap<PathBuf, u32>>,
    }

    impl FakeFs {
        fn files_for(&self, dir: &Path) -> Vec<&'static str> {
            let rel = dir.strip_prefix(&self.root).unwrap();
            let mut files = vec!["cgroup.procs"];
            match self.mode {
                CgroupMode::V2 => files.extend([
                    "cgroup.controllers",
                    "cgroup.subtree_control",
                    "cgroup.kill",
                    "memory.max",
                    "memory.swap.max",
                    "memory.events",
                    "memory.current",
                    "cpu.max",
                    "pids.max",
                ]),
                _ => match rel.components().next().and_then(|c| c.as_os_str().to_str()) {
                    Some("memory") => files.extend([
                        "memory.limit_in_bytes",
                        "memory.memsw.limit_in_bytes",
                        "memory.oom_control",
                        "memory.usage_in_bytes",
                    ]),
                    Some("cpu") => files.extend(["cpu.cfs_quota_us", "cpu.cfs_period_us"]),
                    Some("pids") => files.push("pids.max"),
                    Some("freezer") => files.push("freezer.state"),
                    Some("devices") => files.extend(["devices.allow", "devices.deny"]),
                    Some("unified") => files.push("cgroup.kill"),
                    _ => {}
                },
            }
            files
        }
    }

    impl CgroupFs for FakeFs {
        fn mkdir(&self, path: &Path) -> io::Result<bool> {
            let created = RealFs.mkdir(path)?;
            for f in self.files_for(path) {
                let p = path.join(f);
                if !p.exists() {
                    std::fs::write(p, "")?;
                }
            }
            Ok(created)
        }
        fn rmdir(&self, path: &Path) -> io::Result<()> {
            if let Some(n) = self.busy.lock().unwrap().get_mut(path) {
                if *n > 0 {
                    *n -= 1;
                    return Err(io::Error::from_raw_os_error(libc::EBUSY));
                }
            }
            std::fs::remove_dir_all(path)
        }
        fn read(&self, path: &Path) -> io::Result<String> {
            std::fs::read_to_string(path)
        }
        fn write(&self, path: &Path, data: &str) -> io::Result<()> {
            if !path.is_file() {
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            }
            self.writes
                .lock()
                .unwrap()
                .push((path.to_path_buf(), data.to_string()));
            std::fs::write(path, data)
        }
        fn exists(&self, path: &Path) -> bool {
            path.exists()
        }
        fn attach_device_filter(&self, dir: &Path) -> io::Result<()> {
            self.writes
                .lock()
                .unwrap()
                .push((dir.to_path_buf(), "<device filter>".to_string()));
            Ok(())
        }
    }

    struct TmpDir(PathBuf);
    impl Drop for TmpDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn fake_root(mode: CgroupMode) -> (TmpDir, Arc<FakeFs>, CgroupRoot) {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "berth-cgroup-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let fs = Arc::new(FakeFs {
            mode,
            root: dir.clone(),
            writes: Mutex::new(Vec::new()),
            busy: Mutex::new(BTreeMap::new()),
        });
        match mode {
            CgroupMode::V2 => {
                std::fs::write(
                    dir.join("cgroup.controllers"),
                    "cpuset cpu io memory pids\n",
                )
                .unwrap();
                std::fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
            }
            _ => {
                for c in ["memory", "cpu", "pids", "freezer", "devices"] {
                    std::fs::create_dir(dir.join(c)).unwrap();
                }
                if mode == CgroupMode::Hybrid {
                    std::fs::create_dir(dir.join("unified")).unwrap();
                }
            }
        }
        let root = CgroupRoot {
            path: dir.clone(),
            mode,
            fs: fs.clone(),
        };
        (TmpDir(dir), fs, root)
    }

    fn read(p: PathBuf) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn v2_layout_limits_and_subtree_control() {
        let (tmp, fs, root) = fake_root(CgroupMode::V2);
        let limits = CgroupLimits {
            memory_bytes: Some(16 << 20),
            cpu_quota_us: Some(50_000),
            pids_max: Some(10),
        };
        let cg = Cgroup::create_in(&root, "berth/abc", &limits).unwrap();
        let leaf = tmp.0.join("berth/abc");
        assert_eq!(cg.dirs(), vec![leaf.as_path()]);
        assert_eq!(cg.cgroup2_dir(), Some(leaf.as_path()));
        assert!(cg.v1_dirs().is_empty());
        assert_eq!(
            read(tmp.0.join("cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        assert_eq!(
            read(tmp.0.join("berth/cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        assert_eq!(read(leaf.join("memory.max")), "16777216");
        assert_eq!(read(leaf.join("memory.swap.max")), "0");
        assert_eq!(read(leaf.join("cpu.max")), "50000 100000");
        assert_eq!(read(leaf.join("pids.max")), "10");
        let filters = |fs: &FakeFs| {
            fs.writes
                .lock()
                .unwrap()
                .iter()
                .filter(|(p, v)| p == &leaf && v == "<device filter>")
                .count()
        };
        assert_eq!(filters(&fs), 1, "device filter attached once");
        // The leaf's own subtree_control is left alone (no internal processes).
        assert_eq!(read(leaf.join("cgroup.subtree_control")), "");

        // Idempotent: creating again with no limits resets them.
        Cgroup::create_in(&root, "berth/abc", &CgroupLimits::default()).unwrap();
        assert_eq!(filters(&fs), 1, "not attached again");
        assert_eq!(read(leaf.join("memory.max")), "max");
        assert_eq!(read(leaf.join("memory.swap.max")), "max");
        assert_eq!(read(leaf.join("cpu.max")), "max 100000");
        assert_eq!(read(leaf.join("pids.max")), "max");

        cg.add_pid(42).unwrap();
        assert_eq!(read(leaf.join("cgroup.procs")), "42");
        std::fs::write(leaf.join("cgroup.procs"), "7\n8\n").unwrap();
        assert_eq!(cg.pids().unwrap(), vec![7, 8]);

        assert!(!cg.oom_killed());
        std::fs::write(
            leaf.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert!(cg.oom_killed());
        std::fs::write(leaf.join("memory.current"), "4096\n").unwrap();
        assert_eq!(cg.memory_usage(), Some(4096));

        cg.kill_all(libc::SIGKILL).unwrap();
        assert_eq!(read(leaf.join("cgroup.kill")), "1");

        fs.busy.lock().unwrap().insert(leaf.clone(), 3);
        cg.remove().unwrap();
        assert!(!leaf.exists());
        assert!(tmp.0.join("berth").exists(), "parent is kept");
        cg.remove().unwrap(); // already gone is fine
        assert!(matches!(
            Cgroup::open_in(&root, "berth/abc"),
            Err(RuntimeError::CgroupNotFound(_))
        ));
    }

    #[test]
    fn v2_without_swap_file_and_missing_controllers() {
        let (tmp, _fs, root) = fake_root(CgroupMode::V2);
        std::fs::write(tmp.0.join("cgroup.controllers"), "memory pids\n").unwrap();
        let limits = CgroupLimits {
            memory_bytes: Some(1 << 20),
            ..Default::default()
        };
        let cg = Cgroup::create_in(&root, "x", &limits).unwrap();
        assert_eq!(read(tmp.0.join("cgroup.subtree_control")), "+memory +pids");
        assert_eq!(cg.dirs().len(), 1);
    }

    #[test]
    fn hybrid_layout() {
        let (tmp, fs, root) = fake_root(CgroupMode::Hybrid);
        let limits = CgroupLimits {
            memory_bytes: Some(16 << 20),
            cpu_quota_us: Some(150_000),
            pids_max: Some(20),
        };
        let cg = Cgroup::create_in(&root, "berth/c1", &limits).unwrap();
        let p = |c: &str| tmp.0.join(c).join("berth/c1");
        let expected = [p("memory"), p("cpu"), p("pids"), p("devices"), p("unified")];
        assert_eq!(
            cg.dirs(),
            expected.iter().map(|p| p.as_path()).collect::<Vec<_>>()
        );
        assert_eq!(cg.cgroup2_dir(), Some(p("unified").as_path()));
        assert_eq!(cg.v1_dirs().len(), 4);
        assert_eq!(read(p("memory").join("memory.limit_in_bytes")), "16777216");
        assert_eq!(
            read(p("memory").join("memory.memsw.limit_in_bytes")),
            "16777216"
        );
        assert_eq!(read(p("cpu").join("cpu.cfs_quota_us")), "150000");
        assert_eq!(read(p("pids").join("pids.max")), "20");
        // New cgroup: only the limits that were asked for are written,
        // plus the device rules (deny all, then the allow list).
        let writes = fs.writes.lock().unwrap().clone();
        assert_eq!(writes.len(), 4 + 1 + DEVICE_ALLOW.len(), "{writes:?}");
        let devices: Vec<&str> = writes
            .iter()
            .filter(|(path, _)| path.starts_with(p("devices")))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(devices[0], "a");
        assert_eq!(&devices[1..], &DEVICE_ALLOW[..]);

        std::fs::write(
            p("memory").join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        )
        .unwrap();
        assert!(!cg.oom_killed());
        std::fs::write(
            p("memory").join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert!(cg.oom_killed());

        cg.add_pid(5).unwrap();
        for d in &expected {
            assert_eq!(read(d.join("cgroup.procs")), "5");
        }
        cg.remove().unwrap();
        assert!(expected.iter().all(|d| !d.exists()));
    }

    #[test]
    fn v1_has_freezer_and_no_unified() {
        let (tmp, _fs, root) = fake_root(CgroupMode::V1);
        let cg = Cgroup::create_in(&root, "berth/v", &CgroupLimits::default()).unwrap();
        assert_eq!(cg.dirs().len(), 5);
        assert!(cg.dirs().contains(&tmp.0.join("freezer/berth/v").as_path()));
        assert_eq!(cg.cgroup2_dir(), None);
        assert_eq!(cg.v1_dirs().len(), 5);
        // Empty cgroup: the SIGKILL sweep ends at once.
        cg.kill_all(libc::SIGKILL).unwrap();
        assert_eq!(read(tmp.0.join("freezer/berth/v/freezer.state")), "THAWED");
    }

    #[test]
    fn v1_missing_hierarchy_is_skipped() {
        let (tmp, _fs, root) = fake_root(CgroupMode::Hybrid);
        std::fs::remove_dir(tmp.0.join("pids")).unwrap();
        let cg = Cgroup::create_in(
            &root,
            "c",
            &CgroupLimits {
                pids_max: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
        // memory, cpu, devices, unified
        assert_eq!(cg.dirs().len(), 4);
    }

    #[test]
    fn zero_means_unlimited() {
        let (tmp, fs, root) = fake_root(CgroupMode::V2);
        let limits = CgroupLimits {
            memory_bytes: Some(0),
            cpu_quota_us: Some(0),
            pids_max: Some(-1),
        };
        Cgroup::create_in(&root, "z", &limits).unwrap();
        let writes = fs.writes.lock().unwrap().clone();
        assert!(
            writes
                .iter()
                .all(|(p, v)| p.ends_with("cgroup.subtree_control") || v == "<device filter>"),
            "{writes:?}"
        );
        assert_eq!(read(tmp.0.join("z/memory.max")), "");
    }

    #[test]
    fn bad_names() {
        let (_tmp, _fs, root) = fake_root(CgroupMode::V2);
        for name in ["", "/abs", "a/../b", "a//b", "."] {
            assert!(
                matches!(
                    Cgroup::create_in(&root, name, &CgroupLimits::default()),
                    Err(RuntimeError::InvalidSpec { .. })
                ),
                "{name:?}"
            );
        }
    }

    #[test]
    fn keyed_values() {
        assert_eq!(keyed_value("a 1\noom_kill 7\n", "oom_kill"), Some(7));
        assert_eq!(keyed_value("oom_kill_disable 0\n", "oom_kill"), None);
    }

    #[test]
    fn mode_display() {
        assert_eq!(CgroupMode::Hybrid.to_string(), "hybrid");
        assert_eq!(CgroupMode::V1.to_string(), "v1");
        assert_eq!(CgroupMode::V2.to_string(), "v2");
    }
}
