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
//!
//! Where the time goes, and what the spawn path does about it (measured on
//! a 2-vCPU VM with hybrid cgroups, HZ=250):
//! - Moving a process into a cgroup through `cgroup.procs` write-locks a
//!   global rwsem whose slow path waits for an RCU grace period (8-15 ms).
//!   The child is cloned straight into its cgroup2 directory
//!   (CLONE_INTO_CGROUP) and joins v1 hierarchies by writing "0" to their
//!   `tasks` files, a single-thread move the kernel does without that lock.
//! - Unmounting an overlay syncs its upper file system (the whole host
//!   file system, several ms or far more when others write). The parent
//!   keeps the container's mount namespace alive ([`Spawned::keepalive`])
//!   so that happens when the shim lets go, not while the container exits.
//! - Everything that allocates or can fail in an interesting way (overlay
//!   and bind mounts as detached mounts, C strings, seccomp BPF, /etc file
//!   contents) is prepared before clone; the child only makes syscalls.

pub mod caps;
pub mod cgroup;
mod child;
pub mod devices;
pub mod error;
pub mod etc;
pub mod exec;
pub mod mounts;
pub mod net;
pub mod pidfd;
pub mod runtime;
pub mod seccomp;
pub mod spawn;
pub mod spec;
mod sys;
pub mod tty;
pub mod user;

pub use cgroup::{detect_cgroup_mode, Cgroup, CgroupLimits, CgroupMode};
pub use error::RuntimeError;
pub use exec::exec_in_container;
pub use runtime::{ContainerRuntime, Direct};
pub use spawn::spawn_container;
pub use spec::{BindMount, ContainerSpec, ExecSpec, Keepalive, NetworkSetup, RootfsSpec, Spawned};
