//! What the daemon hands a shim (`spec.json` in the container's directory)
//! and what the shim reports back.

use berth_runtime::cgroup::CgroupLimits;
use berth_runtime::spawn::ContainerSpec;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimSpec {
    pub container: ContainerSpec,
    pub cgroup_name: String,
    pub limits: CgroupLimits,
    pub attach_socket: PathBuf,
    pub log_path: PathBuf,
    pub log_max_file_bytes: u64,
    pub log_max_rotated: u32,
    pub exit_path: PathBuf,
    /// Keep stdin open for attached clients (`-i`).
    pub stdin: bool,
    /// A client (`berth run`) will attach right after the start: keep the
    /// exit status available on the socket until it has seen it, even if
    /// the container ends first.
    #[serde(default)]
    pub wait_attach: bool,
}

/// The one JSON line a shim writes on its stdout once the container runs
/// (or failed to start).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimReport {
    pub ok: bool,
    #[serde(default)]
    pub pid: i32,
    #[serde(default)]
    pub start_time: u64,
    #[serde(default)]
    pub error: Option<String>,
    /// Exit code Docker gives such a failure (127 not found, 126 not executable).
    #[serde(default)]
    pub code: i32,
}

/// Written by the shim, atomically, when the container's main process ends.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ExitRecord {
    pub code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub finished_at: i64,
}
