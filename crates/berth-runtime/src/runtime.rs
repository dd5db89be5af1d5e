//! The seam between the engine and a container runtime implementation.
//!
//! The engine's shim and exec helper only see [`ContainerRuntime`]; the
//! implementation in use is [`Direct`], this crate's own clone-based path.
//! Another implementation (youki's `libcontainer` was measured as one, see
//! ARCHITECTURE.md) would plug in here without touching the engine.

use crate::cgroup::Cgroup;
use crate::error::RuntimeError;
use crate::spec::{ContainerSpec, ExecSpec, Spawned};
use std::os::fd::RawFd;

pub trait ContainerRuntime {
    /// Starts the container's first process in its namespaces and cgroup,
    /// with `stdio` as its fds 0, 1 and 2. Called from a single-threaded
    /// process; the process is a child of the caller.
    fn spawn(
        &self,
        spec: &ContainerSpec,
        cgroup: &Cgroup,
        stdio: [RawFd; 3],
    ) -> Result<Spawned, RuntimeError>;

    /// Starts a process inside a running container (`exec`); returns its
    /// pid, a child of the caller.
    fn exec(
        &self,
        spec: &ExecSpec,
        cgroup: &Cgroup,
        stdio: [RawFd; 3],
    ) -> Result<i32, RuntimeError>;
}

/// berth's own runtime: clone into new namespaces, detached mounts,
/// capabilities, no_new_privs, seccomp, execve.
#[derive(Debug, Clone, Copy, Default)]
pub struct Direct;

impl ContainerRuntime for Direct {
    fn spawn(
        &self,
        spec: &ContainerSpec,
        cgroup: &Cgroup,
        stdio: [RawFd; 3],
    ) -> Result<Spawned, RuntimeError> {
        crate::spawn::spawn_container(spec, cgroup, stdio)
    }

    fn exec(
        &self,
        spec: &ExecSpec,
        cgroup: &Cgroup,
        stdio: [RawFd; 3],
    ) -> Result<i32, RuntimeError> {
        crate::exec::exec_in_container(spec, cgroup, stdio)
    }
}
