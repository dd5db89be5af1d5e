//! `docker exec`: a new process inside a running container.
//!
//! The caller joins the target's PID namespace for its children only
//! (setns on the pid namespace changes `pid_for_children`, not the caller),
//! clones straight into the container's cgroup2 directory, and restores
//! its own `pid_for_children` right away. The child joins the v1 cgroups,
//! then every other namespace of the target in one setns(pidfd, ...) call,
//! and from there follows the same path as the container's first process:
//! resolve the user, chdir, session/tty, stdio, capabilities, no_new_privs,
//! seccomp, exec.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use crate::cgroup::Cgroup;
use crate::child::{self, ExecPlan, Failure, Lockdown, Step};
use crate::pidfd::pidfd_open;
use crate::spawn::{await_exec, ensure_single_threaded, CgroupJoin};
use crate::sys;
use crate::user::{ExecUser, UserSpec};
use crate::RuntimeError;

pub use crate::spec::ExecSpec;

fn ns_inode(path: &str) -> Result<u64, RuntimeError> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|e| RuntimeError::io("stat", path, e))
}

fn open_ns(path: &str) -> Result<File, RuntimeError> {
    File::open(path).map_err(|e| RuntimeError::io("open", path, e))
}

struct ExecPrepared {
    join: CgroupJoin,
    pidfd: OwnedFd,
    ns_flags: libc::c_int,
    cwd: CString,
    lockdown: Lockdown,
    exec: ExecPlan,
    stdio: [RawFd; 3],
    tty: bool,
}

fn exec_child(p: &mut ExecPrepared, report: RawFd) -> ! {
    let user = match exec_setup(p) {
        Ok(user) => user,
        Err(f) => child::fail(report, &f),
    };
    let failure = child::lock_down_and_exec(&p.lockdown, &user, &mut p.exec);
    child::fail(report, &failure)
}

fn exec_setup(p: &mut ExecPrepared) -> Result<ExecUser, Failure<'_>> {
    p.join.join()?;
    sys::setns(p.pidfd.as_raw_fd(), p.ns_flags).step("join container namespaces")?;
    let mut user = ExecUser::default();
    p.lockdown.resolve_user(&mut user)?;
    sys::chdir(&p.cwd).at("chdir", &p.cwd)?;
    child::install_stdio(p.stdio)?;
    child::session(p.tty)?;
    Ok(user)
}

/// Runs `spec.args` inside the container of `spec.target_pid`. Returns the
/// pid of the new process, a child of the caller. Must be called from a
/// single-threaded process.
pub fn exec_in_container(
    spec: &ExecSpec,
    cgroup: &Cgroup,
    stdio: [RawFd; 3],
) -> Result<i32, RuntimeError> {
    ensure_single_threaded("exec in container")?;
    let target = spec.target_pid;
    let pidfd = pidfd_open(target)
        .map_err(|e| RuntimeError::io("pidfd_open", format!("pid {target}"), e))?;
    let mut ns_flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP;
    // Joining the user namespace we are already in is an error (EINVAL).
    if ns_inode(&format!("/proc/{target}/ns/user"))? != ns_inode("/proc/self/ns/user")? {
        ns_flags |= libc::CLONE_NEWUSER;
    }
    let target_pidns = open_ns(&format!("/proc/{target}/ns/pid"))?;
    let own_pidns = open_ns("/proc/self/ns/pid_for_children")?;
    let cwd = if spec.cwd.is_empty() {
        "/"
    } else {
        spec.cwd.as_str()
    };
    let mut prepared = ExecPrepared {
        join: CgroupJoin::prepare(cgroup)?,
        pidfd,
        ns_flags,
        cwd: CString::new(cwd).map_err(|_| RuntimeError::InvalidSpec {
            what: "working directory",
            value: spec.cwd.clone(),
        })?,
        lockdown: Lockdown::new(&spec.user),
        exec: ExecPlan::new(&spec.args, &spec.env)?,
        stdio,
        tty: spec.tty,
    };
    let [report_r, report_w] = sys::pipe_cloexec()
        .map_err(|e| RuntimeError::sys("pipe2", std::io::Error::from_raw_os_error(e)))?
        .map(|fd| {
            // SAFETY: pipe2 just returned these fds; nothing else owns them.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
        });

    sys::setns(target_pidns.as_raw_fd(), libc::CLONE_NEWPID).map_err(|e| {
        RuntimeError::io(
            "setns",
            format!("/proc/{target}/ns/pid"),
            std::io::Error::from_raw_os_error(e),
        )
    })?;
    let (cg_flag, cg_fd) = prepared.join.clone_flags();
    let mut args = sys::CloneArgs {
        flags: cg_flag,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cg_fd,
        ..Default::default()
    };
    // As in spawn_container: let the child run on our CPU right away.
    let pin = sys::CpuPin::here();
    let cloned = sys::clone3(&mut args);
    if let Some(pin) = &pin {
        pin.restore();
    }
    if cloned == Ok(0) {
        sys::close(report_r.as_raw_fd());
        exec_child(&mut prepared, report_w.as_raw_fd());
    }
    // Parent: our own later children belong to our namespace again.
    let restored = sys::setns(own_pidns.as_raw_fd(), libc::CLONE_NEWPID);
    let pid =
        cloned.map_err(|e| RuntimeError::sys("clone3", std::io::Error::from_raw_os_error(e)))?;
    drop(report_w);
    drop(prepared);
    if let Err(e) = restored {
        // Should not happen (it is our own namespace); do not leave a
        // process running that the caller will not learn about.
        let _ = sys::kill(pid, libc::SIGKILL);
        let _ = sys::waitpid(pid);
        return Err(RuntimeError::io(
            "setns",
            "/proc/self/ns/pid_for_children",
            std::io::Error::from_raw_os_error(e),
        ));
    }
    let arg0 = spec.args.first().map(String::as_str).unwrap_or("");
    await_exec(report_r, pid, arg0, &UserSpec::parse(&spec.user))?;
    Ok(pid)
}
