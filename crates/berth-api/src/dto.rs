//! Request and response bodies. Field names are snake_case JSON.

use berth_types::{ContainerConfig, ContainerState, PortMapping};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    pub version: String,
    pub api_version: String,
    pub data_dir: String,
    pub cgroup_mode: String,
    pub storage_driver: String,
    pub containers: usize,
    pub containers_running: usize,
    pub containers_stopped: usize,
    pub images: usize,
}

/// `POST /v1/containers`: create, and optionally start and attach in the
/// same round trip (what `berth run` does).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRequest {
    pub config: ContainerConfig,
    #[serde(default)]
    pub start: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateResponse {
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerSummary {
    pub id: String,
    pub name: String,
    pub image: String,
    pub command: String,
    /// Unix seconds.
    pub created: i64,
    pub state: ContainerState,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    pub ports: Vec<PortMapping>,
    pub restart_count: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerDetails {
    #[serde(flatten)]
    pub summary: ContainerSummary,
    pub image_id: String,
    pub config: ContainerConfig,
    pub pid: Option<i32>,
    pub ip_address: Option<String>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub upper_dir: String,
    pub log_path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaitResponse {
    pub exit_code: i32,
    pub oom_killed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeEntry {
    /// "A", "C" or "D", as `docker diff` prints them.
    pub kind: String,
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageSummary {
    pub id: String,
    pub tags: Vec<String>,
    pub created: Option<String>,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportResponse {
    pub id: String,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveImageResponse {
    pub lines: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneResponse {
    pub images_deleted: Vec<String>,
    pub layers_deleted: usize,
    pub bytes_reclaimed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitRequest {
    pub repo: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub workdir: Option<String>,
}

/// One line of the `POST /v1/build` response stream (JSON lines).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum BuildMessage {
    Step {
        index: usize,
        total: usize,
        text: String,
    },
    CacheHit,
    Output {
        text: String,
    },
    Error {
        message: String,
    },
    Done {
        image_id: String,
    },
}
