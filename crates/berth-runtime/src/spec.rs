//! What a container is made of, as the engine describes it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::net::BridgeAttachment;

/// The container's root: an overlay of image layers plus a private upper
/// directory, mounted at `mountpoint` inside the container's own mount
/// namespace only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootfsSpec {
    /// Image layers, top-most first (overlayfs `lowerdir` order).
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: PathBuf,
    pub workdir: PathBuf,
    pub mountpoint: PathBuf,
    /// Mount with overlayfs `volatile`: no sync at unmount; for upper
    /// directories that are discarded afterwards.
    #[serde(default)]
    pub volatile: bool,
}

/// A host path bound into the container (`-v /src:/dst[:ro]`), recursively.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    /// Absolute path inside the container; created if missing.
    pub destination: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NetworkSetup {
    /// Share the host's network namespace.
    Host,
    /// A new network namespace with only `lo`, up.
    None,
    /// A new network namespace attached to a bridge through a veth pair.
    Bridge(BridgeAttachment),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub id: String,
    pub hostname: String,
    pub rootfs: RootfsSpec,
    pub args: Vec<String>,
    /// `KEY=value` entries; PATH from here is used to find `args[0]`.
    pub env: Vec<String>,
    /// Working directory; created if missing, as Docker does. "" means "/".
    pub cwd: String,
    /// "", "name", "uid", "uid:gid", "name:group", resolved against the
    /// container's /etc/passwd and /etc/group.
    pub user: String,
    pub mounts: Vec<BindMount>,
    pub network: NetworkSetup,
    /// User namespace mapping container ids 0..65536 to host 100000.. .
    pub userns: bool,
    /// stdio are a pty slave: the process gets it as controlling terminal.
    pub tty: bool,
    /// Extra /etc/hosts entries as (hostname, address), from
    /// `--add-host name:address`.
    pub extra_hosts: Vec<(String, String)>,
}

/// The container's first process, as seen from the host.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    /// Host end of the veth pair (bridge networking only).
    pub host_veth: Option<String>,
    /// Keeps the container's mount namespace alive past its last process.
    /// Drop it after reaping `pid` (ideally after reporting the exit
    /// status): tearing the mounts down flushes the overlay's upper
    /// directory to disk and waits for an RCU grace period, which would
    /// otherwise delay the process's exit by several milliseconds. The
    /// mounts are never visible on the host either way; dropping this
    /// early is harmless.
    pub keepalive: Keepalive,
}

/// See [`Spawned::keepalive`].
#[derive(Debug, Default)]
pub struct Keepalive {
    pub(crate) _mount_ns: Option<std::os::fd::OwnedFd>,
}

/// `docker exec`: a new process inside a running container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Host pid of any process of the container (normally its pid 1).
    pub target_pid: i32,
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// "" means "/". Not created when missing.
    pub cwd: String,
    pub user: String,
    pub tty: bool,
}

/// First host id of the user-namespace mapping (`userns: true`).
pub const USERNS_HOST_BASE: u32 = 100_000;
/// Number of ids mapped.
pub const USERNS_SIZE: u32 = 65_536;

/// The PATH used when the environment has none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ContainerSpec>();
        check::<ExecSpec>();
        check::<Spawned>();
        check::<crate::Cgroup>();
        check::<crate::CgroupLimits>();
        check::<crate::RuntimeError>();
    }

    #[test]
    fn spec_round_trips_through_json() {
        let spec = ContainerSpec {
            id: "abc".into(),
            hostname: "abc".into(),
            rootfs: RootfsSpec {
                lowerdirs: vec!["/l1".into(), "/l0".into()],
                upperdir: "/u".into(),
                workdir: "/w".into(),
                mountpoint: "/m".into(),
                volatile: false,
            },
            args: vec!["true".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: "1000:1000".into(),
            mounts: vec![BindMount {
                source: "/data".into(),
                destination: "/data".into(),
                read_only: true,
            }],
            network: NetworkSetup::None,
            userns: false,
            tty: false,
            extra_hosts: vec![("db".into(), "10.0.0.2".into())],
        };
        let json = serde_json::to_string(&spec).unwrap();
        let back: ContainerSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }
}
