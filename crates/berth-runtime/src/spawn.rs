//! Starting a container's first process.
//!
//! The parent (berth's single-threaded per-container shim) prepares
//! everything that allocates or can fail in an interesting way: detached
//! mounts, C strings, the seccomp program, file contents, cgroup fds. Then
//! one clone3 creates the child in its new namespaces, directly inside the
//! container's cgroup2 directory (CLONE_INTO_CGROUP), and the child joins
//! the v1 hierarchies itself by writing "0" to pre-opened cgroup.procs fds
//! before anything else. The child builds its root, drops privileges and
//! execs; errors travel back over a CLOEXEC pipe, so EOF on that pipe
//! means the exec happened.
//!
//! The parent only talks to the child when it must: with a user namespace
//! the child waits for its id maps before doing anything; with a bridge
//! the child sets up its mounts while the parent plugs in the veth pair,
//! and waits only before dropping privileges.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::cgroup::Cgroup;
use crate::child::{self, ExecPlan, Failure, Lockdown, Step};
use crate::etc;
use crate::mounts::{self, MountPlan};
use crate::net;
use crate::spec::{USERNS_HOST_BASE, USERNS_SIZE};
use crate::sys;
use crate::user::ExecUser;
use crate::RuntimeError;

pub use crate::spec::{BindMount, ContainerSpec, Keepalive, NetworkSetup, RootfsSpec, Spawned};

/// fds that put a new process into a cgroup.
pub(crate) struct CgroupJoin {
    /// cgroup2 directory for CLONE_INTO_CGROUP.
    cgroup2: Option<OwnedFd>,
    /// `tasks` of the other (v1) hierarchies, opened for writing.
    procs: Vec<OwnedFd>,
}

impl CgroupJoin {
    pub fn prepare(cgroup: &Cgroup) -> Result<Self, RuntimeError> {
        let cgroup2 = match cgroup.cgroup2_dir() {
            Some(dir) => Some(
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                    .open(dir)
                    .map_err(|e| RuntimeError::io("open", dir, e))?
                    .into(),
            ),
            None => None,
        };
        let procs = cgroup
            .v1_dirs()
            .into_iter()
            .map(|dir| {
                // `tasks`, not cgroup.procs: the kernel moves a single
                // thread writing "0" there without taking the global
                // threadgroup rwsem, whose write side waits for an RCU
                // grace period (8-15 ms here). Our child is
                // single-threaded, so one thread is the whole process.
                let path = dir.join("tasks");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|e| RuntimeError::io("open", path, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CgroupJoin { cgroup2, procs })
    }

    pub fn clone_flags(&self) -> (u64, u64) {
        match &self.cgroup2 {
            Some(fd) => (sys::CLONE_INTO_CGROUP, fd.as_raw_fd() as u64),
            None => (0, 0),
        }
    }

    /// Child: moves itself into the v1 hierarchies ("0" means "me", and
    /// "me" is what lets the kernel skip the expensive lock).
    pub fn join(&self) -> Result<(), Failure<'static>> {
        for fd in &self.procs {
            sys::write_all(fd.as_raw_fd(), b"0").step("join cgroup")?;
        }
        Ok(())
    }
}

/// One /etc file to write inside the container.
struct EtcFile {
    path: &'static std::ffi::CStr,
    content: Vec<u8>,
}

/// Everything the container child uses, prepared before clone.
struct Prepared {
    join: CgroupJoin,
    mounts: MountPlan,
    hostname: Option<CString>,
    loopback: bool,
    files: Vec<EtcFile>,
    cwd: CString,
    lockdown: Lockdown,
    exec: ExecPlan,
    stdio: [RawFd; 3],
    tty: bool,
    userns: bool,
}

/// Pipe ends as owned fds.
fn pipe() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    let [r, w] = sys::pipe_cloexec()
        .map_err(|e| RuntimeError::sys("pipe2", std::io::Error::from_raw_os_error(e)))?;
    // SAFETY: pipe2 just returned these fds; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(r), OwnedFd::from_raw_fd(w)) })
}

pub(crate) fn ensure_single_threaded(what: &'static str) -> Result<(), RuntimeError> {
    match sys::thread_count() {
        Some(1) | None => Ok(()),
        Some(n) => Err(RuntimeError::sys(
            what,
            std::io::Error::other(format!("caller must be single-threaded, has {n} threads")),
        )),
    }
}

fn host_resolv_conf() -> String {
    std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
}

fn etc_files(spec: &ContainerSpec) -> Vec<EtcFile> {
    let (own, host_net) = match &spec.network {
        NetworkSetup::Bridge(att) => (Some(att.address), false),
        NetworkSetup::None => (None, false),
        NetworkSetup::Host => (None, true),
    };
    let hosts = if host_net {
        // Docker shares the host's view of names with --network host.
        std::fs::read_to_string("/etc/hosts")
            .unwrap_or_else(|_| etc::hosts(&spec.hostname, None, &[]))
            + &etc::hosts("", None, &spec.extra_hosts)
                .lines()
                .skip(6)
                .map(|l| format!("{l}\n"))
                .collect::<String>()
    } else {
        etc::hosts(&spec.hostname, own, &spec.extra_hosts)
    };
    let mut files = vec![
        EtcFile {
            path: c"/etc/hosts",
            content: hosts.into_bytes(),
        },
        EtcFile {
            path: c"/etc/resolv.conf",
            content: etc::resolv_conf(&host_resolv_conf(), host_net).into_bytes(),
        },
    ];
    if !spec.hostname.is_empty() {
        files.push(EtcFile {
            path: c"/etc/hostname",
            content: etc::hostname(&spec.hostname).into_bytes(),
        });
    }
    files
}

fn prepare(
    spec: &ContainerSpec,
    cgroup: &Cgroup,
    stdio: [RawFd; 3],
) -> Result<Prepared, RuntimeError> {
    let host_net = matches!(spec.network, NetworkSetup::Host);
    let cwd = if spec.cwd.is_empty() {
        "/"
    } else {
        spec.cwd.as_str()
    };
    if !cwd.starts_with('/') {
        return Err(RuntimeError::InvalidSpec {
            what: "working directory (must be absolute)",
            value: spec.cwd.clone(),
        });
    }
    let hostname = if spec.hostname.is_empty() {
        None
    } else {
        Some(
            CString::new(spec.hostname.as_str()).map_err(|_| RuntimeError::InvalidSpec {
                what: "hostname",
                value: spec.hostname.clone(),
            })?,
        )
    };
    Ok(Prepared {
        join: CgroupJoin::prepare(cgroup)?,
        mounts: MountPlan::prepare(
            &spec.rootfs,
            &spec.mounts,
            spec.userns,
            host_net,
            spec.tty.then_some(stdio[0]),
        )?,
        hostname,
        loopback: matches!(spec.network, NetworkSetup::None),
        files: etc_files(spec),
        cwd: CString::new(cwd).map_err(|_| RuntimeError::InvalidSpec {
            what: "working directory",
            value: spec.cwd.clone(),
        })?,
        lockdown: Lockdown::new(&spec.user),
        exec: ExecPlan::new(&spec.args, &spec.env)?,
        stdio,
        tty: spec.tty,
        userns: spec.userns,
    })
}

/// Writes one /etc file inside the new root, replacing a symlink rather
/// than following it.
fn write_etc(file: &EtcFile) -> Result<(), Failure<'static>> {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let fd = match sys::open(file.path, flags, 0o644) {
        Ok(fd) => fd,
        Err(libc::ELOOP) => {
            sys::unlink(file.path).at("unlink", file.path)?;
            sys::open(file.path, flags, 0o644).at("create", file.path)?
        }
        Err(libc::ENOENT) => {
            mounts::mkdir_all(c"/etc", 0o755).at("mkdir", c"/etc")?;
            sys::open(file.path, flags, 0o644).at("create", file.path)?
        }
        Err(e) => return Err(Failure::setup("create", file.path, e)),
    };
    let result = sys::write_all(fd, &file.content).at("write", file.path);
    sys::close(fd);
    result
}

/// Blocks until the parent says go; exits quietly if the parent died or
/// gave up (EOF), since there is nobody to report to.
fn wait_for_parent(fd: RawFd) {
    let mut b = [0u8; 1];
    match sys::read(fd, &mut b) {
        Ok(1) => {}
        _ => sys::exit(1),
    }
}

/// The container child, from clone to exec. Never returns.
fn child_main(p: &mut Prepared, report: RawFd, sync: Option<RawFd>, sync_early: bool) -> ! {
    let user = match child_setup(p, sync, sync_early) {
        Ok(user) => user,
        Err(f) => child::fail(report, &f),
    };
    let failure = child::lock_down_and_exec(&p.lockdown, &user, &mut p.exec);
    child::fail(report, &failure)
}

fn child_setup(
    p: &mut Prepared,
    sync: Option<RawFd>,
    sync_early: bool,
) -> Result<ExecUser, Failure<'_>> {
    if let (Some(fd), true) = (sync, sync_early) {
        wait_for_parent(fd);
    }
    p.join.join()?;
    if p.userns {
        // Still host root (kuid 0), which the new namespace does not map:
        // become its root, i.e. the first id of the mapping.
        sys::setgroups(&[]).step("setgroups")?;
        sys::setresgid(0).step("setgid")?;
        sys::setresuid(0).step("setuid")?;
    }
    sys::umask(0);
    p.mounts.apply()?;
    if let Some(name) = &p.hostname {
        sys::sethostname(name.to_bytes()).at("sethostname", name)?;
    }
    if p.loopback {
        sys::loopback_up().step("bring up lo")?;
    }
    for f in &p.files {
        write_etc(f)?;
    }
    let mut user = ExecUser::default();
    p.lockdown.resolve_user(&mut user)?;
    mounts::mkdir_all(&p.cwd, 0o755).at("mkdir", &p.cwd)?;
    sys::chdir(&p.cwd).at("chdir", &p.cwd)?;
    child::install_stdio(p.stdio)?;
    child::session(p.tty)?;
    if let (Some(fd), false) = (sync, sync_early) {
        wait_for_parent(fd);
    }
    Ok(user)
}

fn write_id_maps(pid: i32) -> Result<(), RuntimeError> {
    let map = format!("0 {USERNS_HOST_BASE} {USERNS_SIZE}\n");
    for file in ["uid_map", "gid_map"] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, &map).map_err(|e| RuntimeError::io("write", path, e))?;
    }
    Ok(())
}

/// Kills and reaps a child that will not be used.
fn abandon(pid: i32) {
    let _ = sys::kill(pid, libc::SIGKILL);
    let _ = sys::waitpid(pid);
}

/// Reads the child's report: Ok on EOF (exec happened), else the error
/// (after reaping the child).
pub(crate) fn await_exec(
    report: OwnedFd,
    pid: i32,
    arg0: &str,
    user: &crate::user::UserSpec,
) -> Result<(), RuntimeError> {
    let mut buf = [0u8; 4096 + 256];
    let n = sys::read_full(report.as_raw_fd(), &mut buf).map_err(|e| {
        RuntimeError::sys("read child report", std::io::Error::from_raw_os_error(e))
    })?;
    if n == 0 {
        return Ok(());
    }
    let _ = sys::waitpid(pid);
    Err(child::decode_report(&buf[..n], arg0, user))
}

/// Starts the container's first process; see the crate docs for the
/// sequence. Must be called from a single-threaded process.
pub fn spawn_container(
    spec: &ContainerSpec,
    cgroup: &Cgroup,
    stdio: [RawFd; 3],
) -> Result<Spawned, RuntimeError> {
    ensure_single_threaded("spawn container")?;
    let mut prepared = prepare(spec, cgroup, stdio)?;
    let bridge = match &spec.network {
        NetworkSetup::Bridge(att) => Some(att),
        _ => None,
    };
    let need_sync = spec.userns || bridge.is_some();
    let (report_r, report_w) = pipe()?;
    let sync = if need_sync { Some(pipe()?) } else { None };

    let mut flags =
        (libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWPID) as u64;
    if !matches!(spec.network, NetworkSetup::Host) {
        flags |= libc::CLONE_NEWNET as u64;
    }
    if spec.userns {
        flags |= libc::CLONE_NEWUSER as u64;
    }
    let (cg_flag, cg_fd) = prepared.join.clone_flags();
    let mut args = sys::CloneArgs {
        flags: flags | cg_flag,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cg_fd,
        ..Default::default()
    };
    // With nothing to do in parallel, run the child on our CPU: it starts
    // the moment we block on the report pipe instead of waiting for an
    // idle (in a VM possibly halted) CPU to wake up, which cost up to a few
    // ms per spawn here when the machine was quiet. With a bridge the
    // parent plugs in the veth pair while the child builds its mounts, so
    // both CPUs are welcome.
    let pin = if bridge.is_none() {
        sys::CpuPin::here()
    } else {
        None
    };
    let cloned = sys::clone3(&mut args);
    if let Some(pin) = &pin {
        // Both the parent and the child go back to the full set.
        pin.restore();
    }
    let pid =
        cloned.map_err(|e| RuntimeError::sys("clone3", std::io::Error::from_raw_os_error(e)))?;
    if pid == 0 {
        // Child. Drop our copies of the parent's pipe ends so a dead
        // parent reads as EOF on the sync pipe.
        sys::close(report_r.as_raw_fd());
        let sync_r = sync.as_ref().map(|(r, w)| {
            sys::close(w.as_raw_fd());
            r.as_raw_fd()
        });
        child_main(&mut prepared, report_w.as_raw_fd(), sync_r, spec.userns)
    }

    // Parent. Hold the child's mount namespace (see Spawned::keepalive);
    // if the child is already gone there is nothing to hold.
    let mount_ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(OwnedFd::from);
    drop(report_w);
    drop(prepared);
    let sync_w = sync.map(|(r, w)| {
        drop(r);
        w
    });
    let mut host_veth = None;
    let plumbing = (|| -> Result<(), RuntimeError> {
        if spec.userns {
            write_id_maps(pid)?;
        }
        if let Some(att) = bridge {
            host_veth = Some(net::attach(pid, att)?);
        }
        if let Some(w) = &sync_w {
            sys::write_all(w.as_raw_fd(), b"1").map_err(|e| {
                RuntimeError::sys("signal child", std::io::Error::from_raw_os_error(e))
            })?;
        }
        Ok(())
    })();
    let arg0 = spec.args.first().map(String::as_str).unwrap_or("");
    if let Err(e) = plumbing {
        // The child may have failed before we signalled it, e.g. an unknown
        // USER: its own report says why. It writes that report before it
        // exits, and its namespaces are torn down during the exit (before it
        // is a zombie), so a plumbing error caused by its death always finds
        // the report already in the pipe. Reading is safe only then: a live
        // child would block the read.
        let child_gone = report_ready(&report_r);
        if child_gone {
            if let Err(report) = await_exec(
                report_r,
                pid,
                arg0,
                &crate::user::UserSpec::parse(&spec.user),
            ) {
                abandon(pid);
                return Err(report);
            }
        }
        abandon(pid);
        return Err(e);
    }
    drop(sync_w);
    await_exec(
        report_r,
        pid,
        arg0,
        &crate::user::UserSpec::parse(&spec.user),
    )?;
    Ok(Spawned {
        pid,
        host_veth,
        keepalive: Keepalive {
            _mount_ns: mount_ns,
        },
    })
}

/// Whether the child's report pipe holds a report or EOF, i.e. whether a
/// read would return at once. Waits up to 50 ms for a child that is
/// between writing its report and closing the pipe.
fn report_ready(report: &OwnedFd) -> bool {
    let mut fds = [libc::pollfd {
        fd: report.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd, the length matches.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 50) };
    n > 0 && fds[0].revents & (libc::POLLIN | libc::POLLHUP) != 0
}
