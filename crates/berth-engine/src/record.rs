//! The persisted record of one container (`container.json`).

use berth_types::{ContainerConfig, ContainerState};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    pub config: ContainerConfig,
    pub image_id: String,
    /// The reference the user gave, shown by `ps`.
    pub image_name: String,
    /// Overlay lower directories, bottom first, fixed at creation so the
    /// container keeps working if its image is untagged or removed.
    pub lowers: Vec<PathBuf>,
    /// Layer digests the container depends on (kept by `image prune`).
    pub layers: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
    pub created: i64,
    pub state: ContainerState,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    pub pid: Option<i32>,
    pub pid_start_time: Option<u64>,
    pub shim_pid: Option<i32>,
    pub shim_start_time: Option<u64>,
    pub ip: Option<Ipv4Addr>,
    pub restart_count: u32,
    /// Set by stop/kill/rm so the restart policy leaves the container down.
    pub stopped_by_user: bool,
}

impl ContainerRecord {
    /// The command as `docker ps` shows it: arguments with spaces in
    /// single quotes.
    pub fn command_line(&self) -> String {
        self.args
            .iter()
            .map(|a| {
                if a.contains(' ') || a.is_empty() {
                    format!("'{a}'")
                } else {
                    a.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}
