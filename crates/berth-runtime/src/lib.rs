//! berth's container runtime: the only crate that talks to the kernel
//! directly (namespaces, cgroups, mounts, capabilities, seccomp, netlink),
//! and so the only one allowed to use `unsafe`.
//!
//! The container path: [`Cgroup::create`], then [`spawn_container`] from a
//! single-threaded shim, which clones the first process into new
//! namespaces and the cgroup, builds its root from detached mounts, drops
//! privileges (Docker's default capabilities, no_new_privs, a seccomp
//! denylist) and execs. [`exec_in_container`] does the same for
//! `docker exec`. Needs Linux 6.8 or later (fsconfig `lowerdir+`).

pub mod caps;
pub mod cgroup;
mod child;
pub mod error;
pub mod etc;
pub mod exec;
pub mod mounts;
pub mod net;
pub mod pidfd;
pub mod seccomp;
pub mod spawn;
pub mod spec;
mod sys;
pub mod tty;
pub mod user;

pub use cgroup::{detect_cgroup_mode, Cgroup, CgroupLimits, CgroupMode};
pub use error::RuntimeError;
pub use exec::exec_in_container;
pub use spawn::spawn_container;
pub use spec::{BindMount, ContainerSpec, ExecSpec, Keepalive, NetworkSetup, RootfsSpec, Spawned};
